// A model download as containers live through it: `engine` killed with SIGKILL in the middle (compose's
// grace period ran out), started again on the same cache, stopped with SIGTERM in the middle.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { resolveModel } from "../../../src/engine/models/hub.js";
import { spawnCli, waitForLog } from "../../cli/run-cli.js";
import { FakeHub, sha256 } from "../../helpers/fake-hub.js";
import { tempDirs } from "../../helpers/temp-dirs.js";
import { until } from "../../queue/support/setup.js";

const SD1 = "test/fixtures/models/sd1/model";
const UNET = "unet/diffusion_pytorch_model.safetensors";

const hub = new FakeHub();
const tempDir = tempDirs("hub-process-test-");
beforeAll(() => hub.start());
afterAll(() => hub.stop());

it("resumes what a SIGKILLed engine downloaded, and stops a download at once on SIGTERM", async () => {
  const files = new Map<string, Buffer>();
  for (const e of readdirSync(SD1, { recursive: true, withFileTypes: true })) {
    if (e.isFile())
      files.set(relative(SD1, join(e.parentPath, e.name)), readFileSync(join(e.parentPath, e.name)));
  }
  hub.publish("test/container", files);
  const cache = tempDir();
  const env = {
    MODEL: "test/container",
    HF_ENDPOINT: hub.url,
    HF_HUB_CACHE: cache,
    MODEL_CACHE_DIR: "",
    HF_HUB_OFFLINE: "0",
    STATE_DIR: tempDir(),
    ENGINE_DEVICE: "cpu",
    ENGINE_HTTP_PORT: "0",
  };
  const blobs = join(cache, "models--test--container", "blobs");
  const unetTemp = () => {
    const name = existsSync(blobs)
      ? readdirSync(blobs).find((f) => f.startsWith(`${sha256(files.get(UNET) as Buffer)}.`))
      : undefined;
    try {
      return name ? statSync(join(blobs, name)).size : 0;
    } catch {
      return 0; // renamed meanwhile (taken over by the next start)
    }
  };
  const unetRanges = () => hub.log.filter((r) => r.server === "cdn" && r.file === UNET).map((r) => r.range);

  // Each response of the UNet stops after 1 MB and hangs, as a download in progress.
  hub.stallAfter.set(UNET, 1_000_000);
  const first = spawnCli(["engine"], env);
  const firstExit = new Promise((resolve) => first.once("exit", resolve));
  await until(() => unetTemp() === 1_000_000, 30_000, "1 MB of the UNet");
  process.kill(-(first.pid as number), "SIGKILL");
  await firstExit;

  // The same container restarted: no stale lock to wait on; it resumes the dead process's bytes.
  const second = spawnCli(["engine"], env);
  const secondExit = new Promise<number | null>((resolve) => second.once("exit", resolve));
  await until(() => unetTemp() === 2_000_000, 30_000, "2 MB of the UNet");
  expect(unetRanges()).toEqual([undefined, "bytes=1000000-"]);
  const stopped = waitForLog(second, "stopped during start-up");
  const sent = Date.now();
  process.kill(-(second.pid as number), "SIGTERM");
  expect((await stopped).reason).toBe(
    "downloading test/container was interrupted: the process is stopping (the next start resumes it)",
  );
  expect(await secondExit).toBe(0);
  expect(Date.now() - sent).toBeLessThan(10_000);

  hub.stallAfter.clear();
  const model = await resolveModel("test/container", { cacheDir: cache, endpoint: hub.url });
  await model.release();
  expect(unetRanges().at(-1)).toBe("bytes=2000000-");
  expect(readFileSync(join(model.folder, UNET)).equals(files.get(UNET) as Buffer)).toBe(true);
  expect(readdirSync(blobs).filter((f) => f.endsWith(".incomplete"))).toEqual([]);
});
