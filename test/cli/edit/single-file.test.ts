/**
 * A single-file checkpoint end to end through the CLI (`edit txt2img`, the engine as the app loads it from
 * MODEL / MODEL_CONFIG): the sd2 fixture's single file (diffusers' own conversion of the folder) with its
 * folder as MODEL_CONFIG draws the same image, byte for byte, as the folder itself; bad combinations stop
 * with one line.
 */
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "../run-cli.js";

const FOLDER = path.resolve("test/fixtures/models/sd2/model");
const SINGLE = path.resolve("test/fixtures/models/sd2/single-file.safetensors");

describe("edit txt2img on a single-file MODEL", () => {
  it("draws the folder's image from the single file with MODEL_CONFIG", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "single-file-cli-"));
    const args = (out: string) => [
      "edit",
      "txt2img",
      "--prompt",
      "a photo of a cat",
      "--steps",
      "2",
      "--size",
      "64",
      "--device",
      "cpu",
      "--out",
      out,
    ];
    const env = { STATE_DIR: path.join(dir, "state"), ENGINE_DTYPE: "fp32" };
    const folder = await runCli(args(path.join(dir, "folder.png")), { ...env, MODEL: FOLDER });
    expect(folder.code, folder.stderr).toBe(0);
    const single = await runCli(args(path.join(dir, "single.png")), {
      ...env,
      MODEL: SINGLE,
      MODEL_CONFIG: FOLDER,
    });
    expect(single.code, single.stderr).toBe(0);
    expect(
      readFileSync(path.join(dir, "single.png")).equals(readFileSync(path.join(dir, "folder.png"))),
    ).toBe(true);
  });

  it("stops with one line on a missing file, or MODEL_CONFIG beside a folder", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "single-file-cli-"));
    const out = path.join(dir, "x.png");
    const base = [
      "edit",
      "txt2img",
      "--prompt",
      "a cat",
      "--steps",
      "1",
      "--size",
      "64",
      "--device",
      "cpu",
      "--out",
      out,
    ];
    const missing = await runCli(base, { STATE_DIR: dir, MODEL: path.join(dir, "sd-v1-4.ckpt") });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(
      /sd-v1-4\.ckpt: file not found \(a single-file MODEL is read from this machine's disk/,
    );
    const both = await runCli(base, { STATE_DIR: dir, MODEL: FOLDER, MODEL_CONFIG: FOLDER });
    expect(both.code).toBe(1);
    expect(both.stderr).toMatch(/MODEL_CONFIG is set but MODEL \(.*\) is not a single-file checkpoint/);
  });
});
