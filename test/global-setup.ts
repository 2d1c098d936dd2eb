/** Once before the suite: the fixtures' single-file checkpoints, rebuilt from their manifests where missing. */
import { ensureSingleFileFixtures } from "./helpers/single-file-fixtures.js";

export default function setup(): void {
  ensureSingleFileFixtures();
}
