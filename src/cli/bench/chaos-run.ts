// The chaos run (issue 13): the real bot process against the fake Discord, a private Redis and two
// engine worker processes on the tiny sd1 fixture model (chaos-system.ts), simulated users running
// /imagic sessions — the command, the seed grid (a real Imagic training and render), a pick (the η
// sweep, rendered from the cached state), a pick (the final image, the sweep's tile at full size) —
// while a seeded schedule SIGKILLs an engine, restarts Redis, restarts the bot (SIGTERM), SIGKILLs the
// bot and drops the gateway. Shared by `npm run bench -- chaos` (chaos.ts) and its short CI form
// (test/cli/bench/chaos.test.ts), so both check the same invariants.
//
// Faults are injected on events, never on timers: each waits for a seeded number of further Discord
// API requests (the run's own clock), then for no command or pick to be waiting on its first answer —
// what a user sends while the bot is down is lost on real Discord too ("the application did not
// respond"), which would measure Discord, not us. A kill may land anywhere after that, between a
// command's thread and its job too (the next bot resumes the command: src/commands/pending.ts). Recovery is awaited the same way (a new gateway
// session, an engine that says ready). A run of fixed length (the bench's --minutes) spreads them: the
// k-th of n waits for k/n of it first. An engine kill waits for an engine to be running a job and kills
// that one. Which job that is depends on timing, so a seed replays the order and the picks, not every
// interleaving.
import { readFileSync } from "node:fs";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import type { FakeMessage, FakeUser } from "../../bots/discord/fake/server.js";
import { NUMBER_EMOJIS } from "../../commands/reactions.js";
import { mulberry32 } from "../../engine/diffusion/rng.js";
import { QUEUE_NAME } from "../../queue/keys.js";
import { PRESETS } from "../../spec/imagic.js";
import { CHAOS_IMAGIC_DEFAULTS } from "./chaos-bot.js";
import { type ChaosEngine, type ChaosSystem, startChaosSystem } from "./chaos-system.js";
import { percentile } from "./queue.js";

export const FAULTS = ["kill-worker", "restart-redis", "restart-bot", "kill-bot", "drop-gateway"] as const;
export type Fault = (typeof FAULTS)[number];

const PHOTO = readFileSync(new URL("../../../test/fixtures/images/chelsea.png", import.meta.url));
const BLOB_TTL_SECONDS = 3600;

export interface ChaosOptions {
  users: number;
  /** /imagic sessions (command, grid, pick, sweep, pick, final) each user runs one after another. */
  sessions: number;
  /** Stop starting sessions after this long (the bench's --minutes); unset, run all `sessions`. */
  durationMs?: number;
  seed: number;
  /** How many of each fault to inject, in a seeded order (default: one of each). */
  faults?: Partial<Record<Fault, number>>;
  /** ENGINE_LOCK_SECONDS of the engines (default 20: a killed engine's job runs again within 25 s). */
  lockSeconds?: number;
  /** This CLI's command line without a command, for the bot and engine processes (default: this process's). */
  cli?: readonly string[];
  /** How long a session may wait for each answer before it counts as lost (default 3 min). */
  timeoutMs?: number;
  log?: (line: string) => void;
}

export interface ChaosReport {
  seed: number;
  users: number;
  commands: number;
  picks: number;
  faults: Record<Fault, number>;
  /**
   * Engine kills of an engine whose /metrics said it was running a job a moment before (the job may
   * have finished in between; jobsRestarted counts the jobs that did run again).
   */
  killsWhileBusy: number;
  acknowledged: number;
  /** Sessions that ended with the final image, or with a failure told to their user. */
  finished: number;
  failedReported: number;
  jobsLost: number;
  /** Jobs that completed or failed (BullMQ's record). */
  jobs: number;
  /** Jobs still waiting, delayed or active after every session ended: each must have finished. */
  jobsUnfinished: number;
  /**
   * Jobs started more than once: the queue is at-least-once (a killed engine's job, or one whose lock
   * lapsed while Redis was down, runs again); what the user sees must still be once (duplicatePosts).
   */
  jobsRestarted: number;
  duplicatePosts: number;
  orphanProcesses: number;
  blobsWithoutTtl: number;
  ackMs: { p50: number; p99: number };
  /** Command → seed grid posted (training and the first render). */
  resultMs: { p50: number; p99: number };
  /** Pick → its answer posted: the η sweep (rendered from the cached state) or the final image (its tile). */
  pickMs: { p50: number; p99: number };
  wallMs: number;
}

function spread(values: number[]): { p50: number; p99: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

const SEED_OFFER = "**Pick a seed**";
const SWEEP_OFFER = "**Pick the final image**";
const FINAL = "**Final**";
/** What each step of a session waits for: the offer (with all its reactions) or the final image. */
const ANSWERS = [SEED_OFFER, SWEEP_OFFER, FINAL] as const;

const failure = (m: FakeMessage) => m.content.startsWith("❌") || m.content.includes("\n❌");

/** Polls `predicate` every 50 ms; rejects after `ms` naming `what`. */
async function until(predicate: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function alive(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  // A --seed replays the schedule and each user's picks (users have their own generators: they run
  // side by side, so one shared generator would hand out numbers in whatever order they got there).
  const rand = mulberry32(options.seed);
  const userRand = Array.from({ length: options.users }, (_, u) => mulberry32(options.seed + 7919 * (u + 1)));
  const log = options.log ?? (() => {});
  const timeoutMs = options.timeoutMs ?? 180_000;
  const started = Date.now();
  const system: ChaosSystem = await startChaosSystem({
    lockSeconds: options.lockSeconds ?? 20,
    blobTtlSeconds: BLOB_TTL_SECONDS,
    ...(options.cli ? { cli: options.cli } : {}),
  });
  const { fake } = system;
  const botMessages = (channelId: string) =>
    fake.messagesIn(channelId).filter((m) => m.author.id === fake.botUser.id);
  const redisPids = new Set<number>([system.redisPid()]);
  const engines: ChaosEngine[] = [];
  let replacing: Promise<void> = Promise.resolve();

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
  const pickMs: number[] = [];
  const threads: string[] = [];
  let commands = 0;
  let picks = 0;
  let acknowledged = 0;
  let finished = 0;
  let failedReported = 0;
  let lost = 0;
  let killsWhileBusy = 0;

  /** The first bot message in `thread` that is `answer` (an offer with all `choices` reactions), or a ❌. */
  const outcome = (thread: string, answer: (typeof ANSWERS)[number], choices: number) =>
    fake.waitFor(
      `${answer} in ${thread}`,
      () =>
        botMessages(thread).find((m) => m.content.includes(answer) && m.reactions.size >= choices) ??
        botMessages(thread).find(failure),
      timeoutMs,
    );

  const people = Array.from({ length: options.users }, (_, u) => fake.user(`user${u}`));

  /** A pick on `offer`: a seeded choice among its reactions; resolves once the bot has answered it. */
  async function pick(user: number, thread: string, offer: FakeMessage): Promise<number> {
    const choice = Math.floor((userRand[user] as () => number)() * offer.reactions.size);
    await gate();
    picks++;
    const before = botMessages(thread).length;
    const at = Date.now();
    fake.react(people[user] as FakeUser, offer.id, NUMBER_EMOJIS[choice] ?? "1️⃣");
    try {
      await fake.waitFor("an answer to the pick", () => botMessages(thread).length > before, timeoutMs);
    } finally {
      pending--;
    }
    return at;
  }

  async function session(user: number, n: number): Promise<void> {
    const person = people[user] as FakeUser;
    const channel = fake.addTextChannel(`u${user}-s${n}`);
    const image = fake.attachment("chelsea.png", PHOTO, "image/png");
    await gate();
    commands++;
    const interaction = fake.runCommand({
      name: "imagic",
      user: person,
      channel,
      options: [
        { name: "image", type: 11, value: image.id },
        { name: "prompt", type: 3, value: "a photo of a sleeping cat" },
        { name: "seeds", type: 3, value: "1,2" },
      ],
      attachments: [image],
    });
    let thread: string;
    try {
      await fake.waitFor("the command's acknowledgement", () => interaction.acknowledgedAt, timeoutMs);
      acknowledged++;
      ackMs.push((interaction.acknowledgedAt ?? 0) - interaction.dispatchedAt);
      const original = await fake.waitFor("the public answer", () => interaction.originalId, timeoutMs);
      thread = await fake.waitFor("its thread", () => fake.messages.get(original)?.threadId, timeoutMs);
    } finally {
      pending--;
    }
    threads.push(thread);
    log(`user ${user} session ${n}: acknowledged, thread ${thread}`);

    const grid = await outcome(thread, SEED_OFFER, 2);
    // Time to result: from the command to the grid message as first posted.
    if (!failure(grid)) resultMs.push((grid.history[0]?.at ?? Date.now()) - interaction.dispatchedAt);
    let offer = grid;
    for (const [answer, choices] of [
      [SWEEP_OFFER, PRESETS[CHAOS_IMAGIC_DEFAULTS.preset].render.etas.length],
      [FINAL, 0],
    ] as const) {
      if (failure(offer)) {
        log(`user ${user} session ${n}: failure told: ${offer.content.split("\n")[0]}`);
        failedReported++;
        finished++;
        return;
      }
      const pickedAt = await pick(user, thread, offer);
      offer = await outcome(thread, answer, choices);
      if (!failure(offer)) pickMs.push((offer.history[0]?.at ?? Date.now()) - pickedAt);
    }
    if (failure(offer)) failedReported++;
    finished++;
    log(`user ${user} session ${n}: ${failure(offer) ? "failure told" : "final image"}`);
  }

  async function inject(fault: Fault): Promise<void> {
    log(`fault: ${fault} (${pending} pending)`);
    switch (fault) {
      case "kill-worker": {
        // The previous replacement first: two engines to choose from, and never both killed.
        await replacing;
        let busy: number[] = [];
        await until(
          async () => {
            const states = await Promise.all(engines.map((e) => system.busy(e)));
            busy = states.flatMap((b, i) => (b ? [i] : []));
            return busy.length > 0;
          },
          timeoutMs,
          "an engine running a job",
        ).catch(() => log("no engine ran a job: killing an idle one"));
        if (busy.length > 0) killsWhileBusy++;
        const candidates = busy.length > 0 ? busy : engines.map((_, i) => i);
        const i = candidates[Math.floor(rand() * candidates.length)] ?? 0;
        const victim = engines[i] as ChaosEngine;
        victim.process.child.kill("SIGKILL");
        await victim.process.exited;
        log(`killed ${victim.name}${busy.includes(i) ? " while busy" : ""}`);
        // The replacement loads the model while users go on (as a supervisor restarting it would).
        replacing = system.startEngine(`engine-${i}-${system.engines.length}`).then((engine) => {
          engines[i] = engine;
          log(`${engine.name} ready`);
        });
        return;
      }
      case "restart-redis":
        // An engine replaced after a kill checks Redis as it starts and exits when it cannot reach it
        // (found by the CI run: "Cannot reach Redis", the run failed); a supervisor would start it
        // again, the run waits for it instead.
        await replacing;
        await system.restartRedis();
        redisPids.add(system.redisPid());
        return;
      case "restart-bot":
      case "kill-bot":
        await system.stopBot(fault === "kill-bot" ? "SIGKILL" : "SIGTERM");
        await system.startBot();
        return;
      case "drop-gateway": {
        const identifies = fake.identifies.length;
        fake.dropConnections();
        await fake.waitFor(
          "the bot back on the gateway",
          () => fake.identifies.length > identifies && fake.connectedBots > 0,
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
  log(`schedule: ${schedule.join(", ")}`);
  const injected = Object.fromEntries(FAULTS.map((f) => [f, 0])) as Record<Fault, number>;
  let usersDone = false;

  try {
    await system.startBot();
    for (let i = 0; i < 2; i++) engines.push(await system.startEngine(`engine-${i}`));
    log(`bot and ${engines.length} engines ready after ${Date.now() - started} ms`);
    const faults = (async () => {
      for (const [k, fault] of schedule.entries()) {
        // A run of fixed length spreads its faults over it: the k-th not before the k-th slot.
        const slot = started + (k * (options.durationMs ?? 0)) / schedule.length;
        await until(() => usersDone || Date.now() >= slot, Number.POSITIVE_INFINITY, "the fault's slot");
        const at = fake.requests.length + 3 + Math.floor(rand() * 15);
        await until(() => usersDone || fake.requests.length >= at, 10 * timeoutMs, "the next fault");
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
    // Awaited after the users; a fault that fails meanwhile must not count as an unhandled rejection.
    faults.catch(() => {});
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
    await replacing;

    const duplicatePosts = threads
      .map((t) => botMessages(t).map((m) => m.content))
      .reduce(
        (sum, texts) =>
          sum + ANSWERS.reduce((n, a) => n + Math.max(0, texts.filter((t) => t.includes(a)).length - 1), 0),
        0,
      );
    const queue = new Queue(QUEUE_NAME, { connection: { url: system.redisUrl() } });
    const jobs = await queue.getJobs(["completed", "failed"]);
    const unfinished = await queue.getJobCountByTypes(
      "active",
      "waiting",
      "delayed",
      "prioritized",
      "waiting-children",
    );
    await queue.close();
    const redis = new Redis(system.redisUrl());
    const blobKeys = await redis.keys("pe:blob:*");
    const ttls = await Promise.all(blobKeys.map((k) => redis.pttl(k)));
    redis.disconnect();

    const report: ChaosReport = {
      seed: options.seed,
      users: options.users,
      commands,
      picks,
      faults: injected,
      killsWhileBusy,
      acknowledged,
      finished,
      failedReported,
      jobsLost: lost,
      jobs: jobs.length,
      jobsUnfinished: unfinished,
      jobsRestarted: jobs.filter((job) => job.attemptsStarted > 1).length,
      duplicatePosts,
      orphanProcesses: 0,
      blobsWithoutTtl: ttls.filter((t) => t < 0 || t > BLOB_TTL_SECONDS * 1000).length,
      ackMs: spread(ackMs),
      resultMs: spread(resultMs),
      pickMs: spread(pickMs),
      wallMs: 0,
    };
    await system.close();
    const pids = [
      ...[...system.engines.map((e) => e.process), ...system.bots].map((p) => p.child.pid),
      ...redisPids,
    ];
    report.orphanProcesses = pids.filter(alive).length;
    report.wallMs = Date.now() - started;
    return report;
  } catch (error) {
    await replacing.catch(() => {});
    await system.close().catch(() => {});
    throw error;
  }
}
