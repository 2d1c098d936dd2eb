/**
 * `bench chaos`: the whole bot under load while things break (issue 13). The real Discord bot against
 * the fake Discord, a private Redis and two engine worker processes on the tiny sd1 fixture model, N
 * users running /imagic sessions (command, seed grid, η sweep, final image), while a seeded schedule
 * SIGKILLs engines, restarts Redis, restarts and SIGKILLs the bot and drops the gateway (chaos-run.ts, shared with
 * the CI test). Fails (exit 1) when a command goes unacknowledged, a session is lost, a job is left
 * unfinished, an answer is posted twice, a process outlives the run or a blob has no TTL.
 */
import { Command } from "commander";
import { UserFacingError } from "../../errors.js";
import { positiveInt } from "./queue.js";

interface Flags {
  users: string;
  minutes: string;
  seed: string;
  faults: string;
}

export function chaosBenchCommand(): Command {
  return new Command("chaos")
    .description(
      "the bot, Redis and two engines (tiny model) under load with engine and bot kills, Redis and bot restarts, gateway drops",
    )
    .option("--users <n>", "simulated users, each running /imagic sessions one after another", "8")
    .option("--minutes <m>", "how long users keep starting sessions", "2")
    .option("--seed <n>", "seed of the fault schedule and the picks (the same seed replays it)", "1")
    .option("--faults <n>", "how many of each fault to inject", "2")
    .action(async (f: Flags) => {
      const { FAULTS, runChaos } = await import("./chaos-run.js");
      const minutes = Number(f.minutes);
      if (!(minutes > 0)) throw new UserFacingError(`--minutes must be a number > 0 (got "${f.minutes}")`);
      const each = positiveInt("--faults", f.faults);
      const report = await runChaos({
        users: positiveInt("--users", f.users),
        sessions: Number.POSITIVE_INFINITY,
        durationMs: minutes * 60_000,
        seed: positiveInt("--seed", f.seed, 0),
        faults: Object.fromEntries(FAULTS.map((fault) => [fault, each])),
        log: (line) => process.stderr.write(`${line}\n`),
      });
      process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      if (
        report.jobsLost > 0 ||
        report.jobsUnfinished > 0 ||
        report.duplicatePosts > 0 ||
        report.acknowledged < report.commands ||
        report.orphanProcesses > 0 ||
        report.blobsWithoutTtl > 0
      )
        process.exitCode = 1;
    });
}
