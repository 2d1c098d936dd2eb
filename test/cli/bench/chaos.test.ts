// The chaos run's short CI form (src/cli/bench/chaos-run.ts): two users, two /imagic sessions each, a
// bot process and two real engine processes with the tiny sd1 model, one of each fault (engine SIGKILL,
// Redis restart, bot restart, bot SIGKILL, gateway drop) on a fixed seed. Every wait is on an event with a deadline of minutes, so
// a slow machine makes it slower, not red; nothing here is timed.
import path from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { FAULTS, runChaos } from "../../../src/cli/bench/chaos-run.js";

/** The CLI through tsx's loader, for the bot and engine processes (this process is vitest, not the CLI). */
const CLI = [
  process.execPath,
  "--import",
  pathToFileURL(path.resolve("node_modules/tsx/dist/loader.mjs")).href,
  path.resolve("src/cli/index.ts"),
];

describe("chaos run", () => {
  it("acknowledges every command and finishes every session once, or tells its failure, through every kind of fault", async () => {
    const report = await runChaos({ users: 2, sessions: 2, seed: 13, cli: CLI });
    expect(report.faults).toEqual(Object.fromEntries(FAULTS.map((f) => [f, 1])));
    expect(report.commands).toBe(4);
    expect(report.acknowledged).toBe(4);
    expect(report.jobsLost).toBe(0);
    expect(report.finished).toBe(4);
    expect(report.jobsUnfinished).toBe(0);
    expect(report.duplicatePosts).toBe(0);
    expect(report.orphanProcesses).toBe(0);
    expect(report.blobsWithoutTtl).toBe(0);
  }, 400_000);
});
