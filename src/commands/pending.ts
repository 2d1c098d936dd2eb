// Commands until their job is queued: a durable record, so that a bot SIGKILLed before does not lose a
// command (Discord does not send an interaction twice).
//
// Before /imagic or /swap is acknowledged, its request is written to Redis under a claim with a lease
// (LeasedClaims, as result deliveries and picks use), renewed while the command runs. Each
// step whose outcome must not happen twice (the photos stored, the public answer, the thread, the
// progress message) records its outcome as it finishes. The job goes in under an id derived from the
// command, and the record is cleared once it is queued (or the user was told why not). A process that
// dies in between stops renewing; every bot process of the platform looks for run-out leases every half
// lease (and when it starts) and runs the command again from its record: recorded steps are not redone,
// and enqueueing under the same id gives the same job.
import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import { childLogger } from "../log.js";
import { LeasedClaims } from "../queue/leased-claims.js";
import type { CommandRequest, ReplyHandle } from "./chat.js";

/** A pending command is resumed within leases; one a day old is only cleared. */
const RECORD_TTL_SECONDS = 86_400;

/** The steps of a command that are done once, in the order they happen. */
export type CommandStep = "blobs" | "answer" | "thread" | "progress";

/** One command, from before its acknowledgement until its job is queued: its request and the steps it has done. */
export class PendingCommand {
  constructor(
    private readonly store: PendingCommands,
    /** Unique per command (the Discord interaction id); the job's id derives from it. */
    readonly id: string,
    readonly request: CommandRequest,
    /** Run again from its record by another process (or this one) after its first run died. */
    readonly resumed: boolean,
    /** How to answer the request in its first process's place (a credential: never logged). */
    readonly handle: ReplyHandle | undefined,
    private readonly done: Partial<Record<CommandStep, string>>,
  ) {}

  /** The job this command enqueues: the same however often the command is resumed. */
  get jobId(): string {
    return `${this.request.command}-${this.id}`;
  }

  /** What an earlier run recorded for `name`, if it got that far. */
  recorded<T>(name: CommandStep): T | undefined {
    const outcome = this.done[name];
    return outcome === undefined ? undefined : (JSON.parse(outcome) as T);
  }

  /** Runs `work` unless an earlier run of this command recorded its outcome; records it. */
  async step<T>(name: CommandStep, work: () => Promise<T>): Promise<T> {
    if (this.done[name] !== undefined) return this.recorded<T>(name) as T;
    const outcome = await work();
    this.done[name] = JSON.stringify(outcome);
    await this.store.record(this.id, name, this.done[name]);
    return outcome;
  }

  /** The command is over (its job queued, or the user told why not): nobody resumes it. */
  async close(): Promise<void> {
    await this.store.clear(this.id);
  }
}

export class PendingCommands {
  private readonly claims: LeasedClaims;
  private readonly log;

  constructor(
    private readonly redis: Redis,
    private readonly platform: string,
    readonly leaseMs: number,
  ) {
    this.claims = new LeasedClaims(
      redis,
      (id) => `pe:chat:command-claim:${platform}:${id}`,
      `pe:chat:commands-pending:${platform}`,
      leaseMs,
    );
    this.log = childLogger("commands", { platform });
  }

  private recordKey(id: string): string {
    return `pe:chat:command:${this.platform}:${id}`;
  }

  /** Records a command (before it is acknowledged); from now on it is resumed if this process dies. */
  async open(request: CommandRequest, handle?: ReplyHandle): Promise<PendingCommand> {
    // A snowflake or a UUID: no ':', and the job id `<command>-<id>` is no integer (BullMQ's custom ids).
    const id = request.id ?? randomUUID();
    // The record and its claim in one transaction: a process killed on the way leaves both (resumed
    // once the lease runs out) or neither (lost with the process, as if it had died just before).
    await this.claims.take(id, (tx) =>
      tx
        .hset(this.recordKey(id), {
          request: JSON.stringify(request),
          ...(handle ? { handle: JSON.stringify(handle) } : {}),
        })
        .expire(this.recordKey(id), RECORD_TTL_SECONDS),
    );
    return new PendingCommand(this, id, request, false, handle, {});
  }

  /**
   * Commands whose process died before they were queued, each taken by this process now (a command
   * whose record is gone, older than a day, is dropped).
   */
  async takeAbandoned(): Promise<PendingCommand[]> {
    const taken: PendingCommand[] = [];
    for (const id of await this.claims.abandoned()) {
      if ((await this.claims.take(id)) !== "retry") continue;
      const { request, handle, ...done } = await this.redis.hgetall(this.recordKey(id));
      if (!request) {
        await this.clear(id);
        continue;
      }
      this.log.info({ command: id }, "resuming a command whose bot died before its job was queued");
      const reply = handle === undefined ? undefined : (JSON.parse(handle) as ReplyHandle);
      taken.push(new PendingCommand(this, id, JSON.parse(request) as CommandRequest, true, reply, done));
    }
    return taken;
  }

  /** Runs `work` on `command`, renewing its lease meanwhile. */
  whileHeld<T>(command: PendingCommand, work: () => Promise<T>): Promise<T> {
    return this.claims.whileHeld(command.id, work, (err) =>
      this.log.warn({ err, command: command.id }, "could not renew a command's lease"),
    );
  }

  async record(id: string, step: CommandStep, outcome: string): Promise<void> {
    await this.redis.hset(this.recordKey(id), step, outcome);
  }

  async clear(id: string): Promise<void> {
    await this.claims.confirm(id);
    await this.redis.del(this.recordKey(id));
  }
}
