// The chaos run's short CI form: three users, two /imagic sessions each (command, grid, pick, sweep),
// one of each fault (worker SIGKILL, Redis restart, bot restart, gateway drop) on a fixed seed. Every
// wait is on an event (chaos-run.ts), so the schedule replays and the test does not depend on timing.
import { describe, expect, it } from "vitest";
import { FAULTS, runChaos } from "./chaos-run.js";

describe("chaos run", () => {
  it("acknowledges every command and finishes every job once through every kind of fault", async () => {
    const report = await runChaos({ users: 3, sessions: 2, seed: 13, steps: 4, stepMs: 30 });
    expect(report.faults).toEqual(Object.fromEntries(FAULTS.map((f) => [f, 1])));
    expect(report.commands).toBe(6);
    expect(report.acknowledged).toBe(6);
    expect(report.jobsLost).toBe(0);
    expect(report.finished).toBe(6);
    expect(report.duplicatePosts).toBe(0);
    expect(report.orphanProcesses).toBe(0);
    expect(report.blobsWithoutTtl).toBe(0);
  }, 120_000);
});
