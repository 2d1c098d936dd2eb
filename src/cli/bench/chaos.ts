/**
 * `bench chaos`: the whole bot under load while things break (issue 13). The real Discord bot against
 * the fake Discord, a private Redis and two engine worker processes (the tests' lightweight stand-in
 * pipelines: this measures the system's plumbing, not the model), N users running /imagic and picks,
 * while a seeded schedule SIGKILLs workers, restarts Redis, restarts the bot and drops the gateway.
 * The run itself is test/cli/bench/chaos-run.ts, shared with the CI test so both check the same
 * invariants; it lives beside the fakes it drives. Fails (exit 1) when a job is lost or posted twice.
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
      "the bot, Redis and two workers under load with worker kills, Redis and bot restarts, gateway drops",
    )
    .option("--users <n>", "simulated users, each running /imagic sessions one after another", "8")
    .option("--minutes <m>", "how long users keep starting sessions", "2")
    .option("--seed <n>", "seed of the fault schedule and the picks (the same seed replays it)", "1")
    .option("--faults <n>", "how many of each fault to inject", "2")
    .action(async (f: Flags) => {
      const { runChaos } = await import("../../../test/cli/bench/chaos-run.js");
      const minutes = Number(f.minutes);
      if (!(minutes > 0)) throw new UserFacingError(`--minutes must be a number > 0 (got "${f.minutes}")`);
      const each = positiveInt("--faults", f.faults);
      const report = await runChaos({
        users: positiveInt("--users", f.users),
        sessions: Number.POSITIVE_INFINITY,
        durationMs: minutes * 60_000,
        seed: positiveInt("--seed", f.seed, 0),
        faults: { "kill-worker": each, "restart-redis": each, "restart-bot": each, "drop-gateway": each },
        log: (line) => process.stderr.write(`${line}\n`),
      });
      process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      if (report.jobsLost > 0 || report.duplicatePosts > 0 || report.acknowledged < report.commands)
        process.exitCode = 1;
    });
}
