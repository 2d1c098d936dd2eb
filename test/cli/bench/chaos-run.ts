// The chaos run (issue 13): the real bot against the fake Discord, a private Redis and two engine
// worker processes (the lightweight stand-in pipelines), simulated users sending /imagic and picks,
// while a seeded schedule SIGKILLs a worker, restarts Redis, restarts the bot and drops the gateway.
// Shared by `npm run bench -- chaos` (src/cli/bench/chaos.ts) and its short CI form (chaos.test.ts),
// so both check the same invariants. It lives under test/ because it drives the test fakes.
//
// Faults are injected on events, never on timers: each waits for a seeded number of further Discord
// API requests (the run's own clock), then for no command or pick to be waiting on its first answer —
// what a user sends while the bot is down is lost on real Discord too ("the application did not
// respond"), which would measure Discord, not us. Recovery is awaited the same way (a new gateway
// session, a worker that says ready), so a seed replays the same schedule.
import type { ChildProcess } from "node:child_process";
import type { FakeUser } from "../../../src/bots/discord/fake/server.js";
import { percentile } from "../../../src/cli/bench/queue.js";
import { opt, type World, world } from "../../bots/discord/support.js";
import { rng } from "../../engine/graph/helpers.js";
import { alive } from "../../helpers/processes.js";
import { until } from "../../queue/support/setup.js";
import { killWorkerProcess, startWorkerProcess } from "../../queue/support/worker-process.js";

export const FAULTS = ["kill-worker", "restart-redis", "restart-bot", "drop-gateway"] as const;
export type Fault = (typeof FAULTS)[number];

export interface ChaosOptions {
  users: number;
  /** /imagic sessions (command, grid, pick, sweep) each user runs one after another. */
  sessions: number;
  /** Stop starting sessions after this long (the bench's --minutes); unset, run all `sessions`. */
  durationMs?: number;
  seed: number;
  /** How many of each fault to inject, in a seeded order (default: one of each). */
  faults?: Partial<Record<Fault, number>>;
  /** Steps and milliseconds per step of the stand-in pipelines (default 6 × 40 ms). */
  steps?: number;
  stepMs?: number;
  /** How long one session may wait for each answer before it counts as lost (default 60 s). */
  timeoutMs?: number;
  log?: (line: string) => void;
}

export interface ChaosReport {
  seed: number;
  users: number;
  commands: number;
  picks: number;
  faults: Record<Fault, number>;
  acknowledged: number;
  /** Sessions that ended with the final offer, or with a failure told to their user. */
  finished: number;
  failedReported: number;
  jobsLost: number;
  /**
   * Jobs whose pipeline ran to its end more than once: the queue is at-least-once (a run whose
   * completion did not reach Redis — killed worker, Redis down — runs again); what the user sees must
   * still be once (duplicatePosts).
   */
  pipelineReruns: number;
  duplicatePosts: number;
  orphanProcesses: number;
  blobsWithoutTtl: number;
  ackMs: { p50: number; p99: number };
  resultMs: { p50: number; p99: number };
  wallMs: number;
}

function spread(values: number[]): { p50: number; p99: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

const SEED_OFFER = "**Pick a seed**";
const FINAL_OFFER = "**Pick the final image**";

export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const rand = rng(options.seed); // a --seed replays the schedule and the picks
  const log = options.log ?? (() => {});
  const timeoutMs = options.timeoutMs ?? 60_000;
  const env = { STEPS: String(options.steps ?? 6), STEP_MS: String(options.stepMs ?? 40) };
  const started = Date.now();
  const w: World = await world({ limits: { minEditIntervalMs: 200 }, timeoutMs });
  const workers: ChildProcess[] = [];
  const everyWorker: ChildProcess[] = [];
  const startWorker = async (name: string) => {
    const child = await startWorkerProcess(w.h.redis.url, name, env);
    everyWorker.push(child);
    return child;
  };

  // Users and faults take turns at one gate: a fault waits for every command and pick to have had
  // its first answer, and nothing new is sent while a fault and its recovery are under way.
  let pending = 0;
  let faulting: Promise<void> | undefined;
  const gate = async () => {
    while (faulting) await faulting;
    pending++;
  };

  const ackMs: number[] = [];
  const resultMs: number[] = [];
  const threads: string[] = [];
  let commands = 0;
  let picks = 0;
  let acknowledged = 0;
  let finished = 0;
  let failedReported = 0;
  let lost = 0;

  /** The first bot message in `thread` that `match`es, or a failure (❌) posted or edited there. */
  const outcome = (thread: string, match: (text: string) => boolean) =>
    w.fake.waitFor(
      `an answer in ${thread}`,
      () =>
        w.posted(thread).find((m) => match(m.content) && m.reactions.size > 0) ??
        w.posted(thread).find((m) => m.content.startsWith("❌") || m.content.includes("\n❌")),
      timeoutMs,
    );

  const people = Array.from({ length: options.users }, (_, u) => w.fake.user(`user${u}`));

  async function session(user: number, n: number): Promise<void> {
    const channel = w.fake.addTextChannel(`u${user}-s${n}`);
    await gate();
    commands++;
    const interaction = w.imagic(channel, [opt.string("seeds", "2")], undefined, people[user]);
    let thread: string;
    try {
      await w.fake.waitFor("the command's acknowledgement", () => interaction.acknowledgedAt, timeoutMs);
      acknowledged++;
      ackMs.push((interaction.acknowledgedAt ?? 0) - interaction.dispatchedAt);
      thread = await w.thread(interaction);
    } finally {
      pending--;
    }
    threads.push(thread);
    log(`user ${user} session ${n}: acknowledged, thread ${thread}`);
    const grid = await outcome(thread, (t) => t.includes(SEED_OFFER));
    if (!grid.content.includes(SEED_OFFER)) {
      failedReported++;
      finished++;
      return;
    }
    // Time to result: from the command to the grid message as first posted.
    resultMs.push((grid.history[0]?.at ?? Date.now()) - interaction.dispatchedAt);
    log(`user ${user} session ${n}: grid`);
    await w.fake.waitFor("2 reactions on the grid", () => grid.reactions.size >= 2, timeoutMs);

    await gate();
    picks++;
    const before = w.posted(thread).length;
    w.fake.react(people[user] as FakeUser, grid.id, rand() < 0.5 ? "1️⃣" : "2️⃣");
    try {
      await w.fake.waitFor("an answer to the pick", () => w.posted(thread).length > before, timeoutMs);
    } finally {
      pending--;
    }
    const sweep = await outcome(thread, (t) => t.includes(FINAL_OFFER));
    if (!sweep.content.includes(FINAL_OFFER)) failedReported++;
    finished++;
  }

  async function inject(fault: Fault): Promise<void> {
    log(`fault: ${fault} (${pending} pending)`);
    switch (fault) {
      case "kill-worker": {
        const i = Math.floor(rand() * workers.length);
        const victim = workers[i];
        if (!victim) return;
        await killWorkerProcess(victim);
        workers[i] = await startWorker(`gpu-${i}-${everyWorker.length}`);
        return;
      }
      case "restart-redis":
        await w.h.redis.restart();
        return;
      case "restart-bot":
        await w.stopBot();
        await w.startBot();
        return;
      case "drop-gateway": {
        const identifies = w.fake.identifies.length;
        w.fake.dropConnections();
        await w.fake.waitFor(
          "the bot back on the gateway",
          () => w.fake.identifies.length > identifies && w.fake.connectedBots > 0,
          timeoutMs,
        );
        return;
      }
    }
  }

  const schedule: Fault[] = FAULTS.flatMap((f) => Array<Fault>(options.faults?.[f] ?? 1).fill(f));
  for (let i = schedule.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [schedule[i], schedule[j]] = [schedule[j] as Fault, schedule[i] as Fault];
  }
  const injected = Object.fromEntries(FAULTS.map((f) => [f, 0])) as Record<Fault, number>;
  let usersDone = false;

  try {
    await w.startBot();
    for (let i = 0; i < 2; i++) workers.push(await startWorker(`gpu-${i}`));
    const faults = (async () => {
      for (const fault of schedule) {
        const at = w.fake.requests.length + 3 + Math.floor(rand() * 15);
        await until(() => usersDone || w.fake.requests.length >= at, 10 * timeoutMs, "the next fault");
        if (usersDone) return;
        let done = () => {};
        faulting = new Promise((resolve) => {
          done = resolve;
        });
        try {
          await until(() => pending === 0, timeoutMs, "first answers before a fault");
          await inject(fault);
          injected[fault]++;
          log(`recovered from ${fault}`);
        } finally {
          faulting = undefined;
          done();
        }
      }
    })();
    const users = Array.from({ length: options.users }, async (_, u) => {
      const deadline = started + (options.durationMs ?? Number.POSITIVE_INFINITY);
      for (let n = 0; n < options.sessions && Date.now() < deadline; n++) {
        await session(u, n).catch((error: unknown) => {
          lost++;
          log(`lost: user ${u} session ${n}: ${error instanceof Error ? error.message : String(error)}`);
        });
      }
    });
    await Promise.all(users);
    usersDone = true;
    await faults;

    const runs = await w.h.redis.client().lrange("test:runs", 0, -1);
    const finishes = new Map<string, number>();
    for (const run of runs) {
      const [event, jobId] = run.split(" ");
      if (event === "finish" && jobId) finishes.set(jobId, (finishes.get(jobId) ?? 0) + 1);
    }
    const duplicatePosts = threads
      .map((t) => w.posted(t).map((m) => m.content))
      .reduce(
        (sum, texts) =>
          sum +
          Math.max(0, texts.filter((t) => t.includes(SEED_OFFER)).length - 1) +
          Math.max(0, texts.filter((t) => t.includes(FINAL_OFFER)).length - 1),
        0,
      );
    const redis = w.h.redis.client();
    const blobKeys = await redis.keys("pe:blob:*");
    const ttls = await Promise.all(blobKeys.map((k) => redis.pttl(k)));

    const report: ChaosReport = {
      seed: options.seed,
      users: options.users,
      commands,
      picks,
      faults: injected,
      acknowledged,
      finished,
      failedReported,
      jobsLost: lost,
      pipelineReruns: [...finishes.values()].filter((n) => n > 1).length,
      duplicatePosts,
      orphanProcesses: 0,
      blobsWithoutTtl: ttls.filter((t) => t < 0).length,
      ackMs: spread(ackMs),
      resultMs: spread(resultMs),
      wallMs: 0,
    };
    await Promise.all(workers.map(killWorkerProcess));
    await w.close();
    report.orphanProcesses = everyWorker.filter((c) => c.pid !== undefined && alive(c.pid)).length;
    report.wallMs = Date.now() - started;
    return report;
  } catch (error) {
    await Promise.all(everyWorker.map(killWorkerProcess));
    await w.close().catch(() => {});
    throw error;
  }
}
