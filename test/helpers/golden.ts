/**
 * Reference data of the fixtures (test/fixtures/models/README.md) and the checks made against it, for any
 * parity suite: a fixture folder holds a checkpoint (`model/`) and data files, each a `<stem>.safetensors`
 * with a `<stem>.json` beside it (golden, extra, exact, photoswap, …). `fixturesWith(stem)` lists the
 * folders in SD_FIXTURES that hold one, so a suite runs on whatever fixtures carry its data and names none.
 */
import { existsSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { expect } from "vitest";
import { type FixtureData, type GoldenJson, loadFixtureData } from "../../src/cli/bench/golden.js";
import { relativeDistance } from "../../src/engine/distance.js";

export { type FixtureData, type GoldenJson, loadFixtureData };

const DEFAULT_FIXTURES = "test/fixtures/models/sd1,test/fixtures/models/sd2";

/** A fixture folder: its name, checkpoint, and the data files it holds. */
export interface Fixture {
  readonly dir: string;
  readonly name: string;
  readonly modelDir: string;
  /** `<stem>.safetensors` (+ json), loaded on first use; throws if the folder lacks it. */
  data(stem: string): FixtureData;
  holds(stem: string): boolean;
}

export interface Golden extends FixtureData, Omit<Fixture, "data" | "holds"> {
  readonly json: GoldenJson;
}

/** Fixture folders from SD_FIXTURES (comma-separated), resolved against the working directory. */
export function fixtureDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  return (env.SD_FIXTURES || DEFAULT_FIXTURES)
    .split(",")
    .map((d) => d.trim())
    .filter((d) => d.length > 0)
    .map((d) => resolve(d));
}

export function fixture(dir: string): Fixture {
  const loaded = new Map<string, FixtureData>();
  return {
    dir,
    name: basename(dir),
    modelDir: join(dir, "model"),
    holds: (stem) => existsSync(join(dir, `${stem}.safetensors`)),
    data: (stem) => {
      let d = loaded.get(stem);
      if (!d) {
        d = loadFixtureData(dir, stem);
        loaded.set(stem, d);
      }
      return d;
    },
  };
}

/** The fixtures in SD_FIXTURES that hold every one of these data files (a suite's data-driven loop). */
export function fixturesWith(...stems: string[]): Fixture[] {
  return fixtureDirs()
    .map(fixture)
    .filter((f) => stems.every((s) => f.holds(s)));
}

export function loadGolden(dir: string): Golden {
  const f = fixture(dir);
  const data = f.data("golden");
  return { ...data, json: data.json as GoldenJson, dir: f.dir, name: f.name, modelDir: f.modelDir };
}

/** All fixtures in SD_FIXTURES, their golden data loaded. */
export function goldens(): Golden[] {
  return fixtureDirs().map(loadGolden);
}

/** ‖a − b‖ / ‖b‖, the parity measure: the engine's own (src/engine/distance.ts). */
export { relativeDistance as relError };

/** ‖x‖₂. */
export function norm(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += (x[i] as number) ** 2;
  return Math.sqrt(s);
}

/** A bound and the reason for it; every parity expectation states both. */
export interface Tolerance {
  max: number;
  why: string;
}

/** ‖ours − ref‖/‖ref‖ < tol.max; a failure prints the error, the bound and its reason. */
export function expectClose(
  what: string,
  ours: ArrayLike<number>,
  ref: ArrayLike<number>,
  tol: Tolerance,
): number {
  const err = relativeDistance(ours, ref);
  expect(
    err,
    `${what}: relative error ${err.toExponential(2)}, bound ${tol.max.toExponential(2)} (${tol.why})`,
  ).toBeLessThan(tol.max);
  return err;
}

/** Two nudges (the up/down pattern and its opposite): a result's float32 spread is the larger response. */
export type Phase = 0 | 1;
export const PHASES: readonly Phase[] = [0, 1];

/** Moves every value by one float32 ulp (alternating up and down; `phase` picks which way the first goes). */
export function ulpNudge(x: Float32Array, phase: Phase): Float32Array {
  return x.map((v, i) => v * (1 + ((i + phase) % 2 ? 2 ** -23 : -(2 ** -23))));
}
