// Chat-agnostic command handling: what /imagic, /swap, /cancel, /queue and /help do, how jobs report
// back (one progress message per job, result grids with number reactions) and what picks do. A chat
// adapter feeds commands and reactions in and implements ChatAdapter for everything that goes out.
//
// Everything needed to answer a job travels with the job (its origin: channel, thread, progress
// message) or sits in Redis (pick records), so a restarted bot carries on where the old one stopped.
import type { Redis } from "ioredis";
import { UserFacingError } from "../errors.js";
import { childLogger } from "../log.js";
import type { BlobStore } from "../queue/blobs.js";
import { type JobPosition, parsePayload, type QueueClient, type QueueClientEvents } from "../queue/client.js";
import { DeliverLaterError } from "../queue/delivery.js";
import type { ChatOrigin, JobInput, JobName, JobProgress, JobResult } from "../queue/jobs.js";
import { sweepAbandoned } from "../queue/leased-claims.js";
import { getPreset } from "../spec/imagic.js";
import { requestedSizeOptions } from "../spec/shape.js";
import { chatImageLimits, type ImageLimits } from "../spec/upload.js";
import { checkDeclared, fetchImage } from "./attachments.js";
import {
  type ChatAdapter,
  type CommandReply,
  type CommandRequest,
  type Conversation,
  type IncomingAttachment,
  type MessageRef,
  type OutgoingMessage,
  PlatformUnavailableError,
  type PostOnce,
  type ReactionEvent,
} from "./chat.js";
import { parseImagic, parseSwap } from "./parse.js";
import { type PendingCommand, PendingCommands } from "./pending.js";
import { type Choice, type PickRecord, type PickRef, PickStore } from "./picks.js";
import { fitText, positionText, progressText, queueLine } from "./progress.js";
import { ProgressMessages } from "./progress-messages.js";
import type { PromptCheck } from "./prompt-check.js";
import { choiceIndex, numberEmojis } from "./reactions.js";
import {
  choiceLine,
  etaLabel,
  expiredText,
  helpText,
  inert,
  quoted,
  retypeText,
  SWAP_LEGEND,
} from "./texts.js";
import { fitUpload } from "./uploads.js";

type ImagicTrainOptions = NonNullable<JobInput<"imagic.train">["options"]>;

export interface ChatCommandsOptions {
  adapter: ChatAdapter;
  /** A client named after the platform (`consumer`) and filtered to it (`platform`). */
  queue: QueueClient;
  blobs: BlobStore;
  redis: Redis;
  imageLimits?: Partial<ImageLimits>;
  /** The engine's prompt check, run before an /imagic job is queued where the bot can read the tokenizer. */
  prompts?: PromptCheck;
  /** Operator settings merged under every /imagic request's options (steps, size, guidance…). */
  imagicDefaults?: Partial<ImagicTrainOptions>;
  /** How often a waiting job's queue position is refreshed on its progress message (default 15 s). */
  positionRefreshMs?: number;
  /** How long one bot process keeps editing a job's progress message after its last edit (30 s). */
  progressLeaseMs?: number;
  /** How long a process that acts on a pick may go silent before another takes the pick over (30 s). */
  pickLeaseMs?: number;
  /**
   * How long an acknowledged command whose job is not queued yet may go without its process renewing
   * its record before another process (or this one, restarted) resumes it (default 30 s; pending.ts).
   */
  commandLeaseMs?: number;
}

/** What a bot's settings add to its commands (the queue side and the adapter come from the bot itself). */
export type BotCommandsOptions = Pick<
  ChatCommandsOptions,
  "imagicDefaults" | "imageLimits" | "positionRefreshMs" | "progressLeaseMs" | "pickLeaseMs" | "prompts"
>;

type Events = { [K in keyof QueueClientEvents]: QueueClientEvents[K][0] };

/** The commands that start an edit, whose refusals say what they were sent with. */
const WORK_COMMANDS = new Set(["imagic", "swap"]);

export class ChatCommands {
  private readonly adapter: ChatAdapter;
  private readonly queue: QueueClient;
  private readonly blobs: BlobStore;
  private readonly picks: PickStore;
  private readonly progress: ProgressMessages;
  private readonly pending: PendingCommands;
  /** Looks for commands whose process died before their job was queued. */
  private commandSweeper: NodeJS.Timeout | undefined;
  private readonly imageLimits: ImageLimits;
  private readonly log;
  /** Position refreshers of waiting jobs this process enqueued, by job id. */
  private readonly waiting = new Map<string, NodeJS.Timeout>();
  private readonly listeners: { [K in keyof Events]: (event: Events[K]) => Promise<void> };
  /**
   * Queue events being handled. A completed/failed delivery is confirmed once its handler settles (the
   * listener returns its promise), so stop() lets these finish before the chat client goes away; a
   * process that dies mid-post has its deliveries redone, idempotently (PostOnce).
   */
  private readonly handling = new Set<Promise<void>>();
  /** Picks this process is acting on (by pickId), which its sweep for abandoned picks leaves alone. */
  private readonly picking = new Set<string>();
  private pickSweeper: NodeJS.Timeout | undefined;

  constructor(private readonly options: ChatCommandsOptions) {
    this.adapter = options.adapter;
    this.queue = options.queue;
    this.blobs = options.blobs;
    this.picks = new PickStore(options.redis, options.adapter.platform, options.pickLeaseMs ?? 30_000);
    this.progress = new ProgressMessages({
      adapter: options.adapter,
      redis: options.redis,
      leaseMs: options.progressLeaseMs,
    });
    this.pending = new PendingCommands(
      options.redis,
      options.adapter.platform,
      options.commandLeaseMs ?? 30_000,
    );
    this.imageLimits = chatImageLimits(options.blobs.limits.maxBytes, options.imageLimits);
    this.log = childLogger("commands", { platform: options.adapter.platform });
    // A handler's failure is logged, except where the platform was down while a job's end was posted:
    // that reaches the queue as DeliverLaterError, and the queue delivers the end again later
    // (redelivery: posted idempotently). Progress is never put off: the next report replaces it.
    const guard =
      <E>(what: string, handler: (event: E) => Promise<void>, later = false) =>
      (event: E) => {
        const run = handler(event).catch((err: unknown) => {
          if (later && err instanceof PlatformUnavailableError)
            throw new DeliverLaterError(`${what}: ${err.message}`, { cause: err });
          this.log.error({ err }, `${what} handler failed`);
        });
        const settled = run.catch(() => {}).finally(() => this.handling.delete(settled));
        this.handling.add(settled);
        return run;
      };
    this.listeners = {
      progress: guard("progress", async (e) => this.onProgress(e)),
      completed: guard("completed", (e) => this.onCompleted(e), true),
      failed: guard("failed", (e) => this.onFailed(e), true),
    };
  }

  /**
   * Starts following the queue's events (from where this platform's consumer left off) and resuming
   * the commands whose process died before their job was queued.
   */
  async start(): Promise<void> {
    this.queue.events.on("progress", this.listeners.progress);
    this.queue.events.on("completed", this.listeners.completed);
    this.queue.events.on("failed", this.listeners.failed);
    await this.queue.listen();
    // Picks a dead process claimed and never finished, and commands whose process died before their
    // job was queued: taken over now, and every half lease.
    this.pickSweeper = sweepAbandoned(
      this.picks.leaseMs,
      () => this.retryAbandonedPicks(),
      (err) => this.log.warn({ err }, "looking for abandoned picks failed"),
    );
    this.commandSweeper = sweepAbandoned(
      this.pending.leaseMs,
      () => this.resumeAbandoned(),
      (err) => this.log.warn({ err }, "looking for abandoned commands failed"),
    );
  }

  /**
   * Stops following events, finishes the ones being handled, and gives the progress messages this
   * process edits back to the others.
   */
  async stop(): Promise<void> {
    clearInterval(this.pickSweeper);
    clearInterval(this.commandSweeper);
    await this.queue.unlisten();
    this.queue.events.off("progress", this.listeners.progress);
    this.queue.events.off("completed", this.listeners.completed);
    this.queue.events.off("failed", this.listeners.failed);
    await Promise.all(this.handling);
    for (const timer of this.waiting.values()) clearInterval(timer);
    this.waiting.clear();
    await this.progress.stop();
  }

  // ── commands ──────────────────────────────────────────────────────────────────────────────────

  /** Handles a command; `resumed` runs again one whose process died before its job was queued. */
  async handleCommand(request: CommandRequest, reply: CommandReply, resumed?: PendingCommand): Promise<void> {
    try {
      switch (request.command) {
        case "imagic":
          return await this.imagic(request, reply, resumed);
        case "swap":
          return await this.swap(request, reply, resumed);
        case "cancel":
          return await this.cancel(request, reply);
        case "queue":
          return await this.showQueue(request, reply);
        case "help":
          return await reply.private(helpText(this.adapter.platform));
        default:
          return await reply.private(`I do not know \`/${request.command}\`; try \`/help\``);
      }
    } catch (error) {
      await this.tell(request, reply, error);
    }
  }

  /**
   * Tells the author alone why their command is refused (an adapter's own reasons too: a permission
   * the bot lacks there), with what /imagic and /swap were sent with, within the platform's length.
   */
  async refuse(request: CommandRequest, reply: CommandReply, why: string): Promise<void> {
    await reply.private(this.refusal(request, why));
  }

  /** Tells the author why their command failed. */
  private async tell(request: CommandRequest, reply: CommandReply, error: unknown): Promise<void> {
    if (error instanceof UserFacingError) {
      await this.refuse(request, reply, error.message);
      return;
    }
    this.log.error({ err: error, command: request.command }, "command failed");
    await reply.private("⚠️ Something went wrong on my side; it has been logged. Please try again later.");
  }

  /**
   * Acknowledges a command that starts a job and runs it under a record (pending.ts) until its job is
   * queued or its author told why not, so that a process dying in between does not lose it.
   */
  private async recorded(
    request: CommandRequest,
    reply: CommandReply,
    resumed: PendingCommand | undefined,
    run: (command: PendingCommand) => Promise<void>,
  ): Promise<void> {
    // The record before the acknowledgement: a process killed between the two leaves a command that
    // another resumes (answering with a plain post where the platform never saw the acknowledgement),
    // where the other order left an acknowledged command that nothing would ever run. A failed
    // acknowledgement fails the command, as any error here: its author is told, the record cleared.
    const command = resumed ?? (await this.pending.open(request, reply.handle));
    try {
      await reply.acknowledge();
      await this.pending.whileHeld(command, () => run(command));
    } catch (error) {
      await this.tell(request, reply, error);
    } finally {
      await command.close();
    }
  }

  /** Runs again the commands whose process died before their job was queued (pending.ts). */
  private async resumeAbandoned(): Promise<void> {
    for (const command of await this.pending.takeAbandoned()) {
      const run = this.handleCommand(command.request, this.resumedReply(command), command)
        .catch((err: unknown) => this.log.error({ err, command: command.id }, "resuming a command failed"))
        .finally(() => this.handling.delete(run));
      this.handling.add(run);
    }
  }

  /**
   * The reply of a command run again by another process: the interaction went with the process that
   * died, so the public answer (if it was not out yet) replaces the request's placeholder while the
   * platform still lets it (else it is a plain post), and what only the author would have seen is said
   * to them there, or where their command was answered.
   */
  private resumedReply(command: PendingCommand): CommandReply {
    const { request } = command;
    return {
      acknowledge: async () => {},
      public: async (message) =>
        (await this.answerOriginal(command, message)) ?? this.adapter.post(request.conversation, message),
      private: async (text) => {
        const note = {
          text: fitText(
            `${this.adapter.mention(request.userId)} I was restarted while starting your \`/${request.command}\`:\n${text}`,
            this.adapter.limits.maxTextLength,
          ),
          notify: [request.userId],
        };
        // Before the public answer the placeholder is still up: the note takes its place.
        if (command.recorded("answer") === undefined && (await this.answerOriginal(command, note))) return;
        await this.adapter.post(command.recorded<Conversation>("thread") ?? request.conversation, note);
      },
    };
  }

  /** Answers in place of the placeholder the command's request left, while its handle is valid. */
  private async answerOriginal(
    command: PendingCommand,
    message: OutgoingMessage,
  ): Promise<MessageRef | undefined> {
    const { handle } = command;
    if (!handle || !this.adapter.answerOriginal || Date.now() >= handle.until) return undefined;
    return this.adapter.answerOriginal(handle, command.request.conversation, message);
  }

  /** What a user wrote, to show in a message of this platform without mentioning anyone (texts.ts). */
  private shown(text: string): string {
    return inert(this.adapter.platform, text);
  }

  /** A prompt or subject quoted in one of our messages: as written, formatting nothing (texts.ts). */
  private quoted(text: string): string {
    return quoted(this.adapter.platform, text);
  }

  /**
   * Why a command was refused; for /imagic and /swap followed by what it was sent with, so that the user
   * fixes the one thing instead of retyping everything (the reason is cut first if both do not fit).
   */
  private refusal(request: CommandRequest, why: string): string {
    const max = this.adapter.limits.maxTextLength;
    const sent = WORK_COMMANDS.has(request.command) ? retypeText(this.adapter.platform, request) : undefined;
    // A prompt near the option's length limit leaves the reason room enough; longer, it is left out.
    if (!sent || sent.length > max / 2) return fitText(`⚠️ ${this.shown(why)}`, max);
    return `${fitText(`⚠️ ${this.shown(why)}`, max - sent.length - 1)}\n${sent}`;
  }

  private async imagic(
    request: CommandRequest,
    reply: CommandReply,
    resumed?: PendingCommand,
  ): Promise<void> {
    const spec = parseImagic(request);
    checkDeclared(spec.image, this.imageLimits);
    await this.options.prompts?.check(spec.prompt);
    await this.queue.checkRoom(request.userId);
    await this.recorded(request, reply, resumed, async (command) => {
      const [imageBlobId] = await command.step("blobs", () => this.storeImages(request.userId, [spec.image]));
      const options: ImagicTrainOptions = {
        ...this.options.imagicDefaults,
        seeds: spec.seeds,
        ...(spec.preset ? { preset: spec.preset } : {}),
        ...(spec.eta !== undefined ? { eta: spec.eta } : {}),
        ...requestedSizeOptions(spec.size),
      };
      await this.startJob(command, reply, {
        name: "imagic.train",
        title: `🎨 ${this.adapter.mention(request.userId)} asked Imagic for “${this.quoted(spec.prompt)}”`,
        thread: `Imagic: ${this.shown(spec.prompt)}`,
        payload: (origin) => ({ userId: request.userId, origin, imageBlobId, prompt: spec.prompt, options }),
      });
    });
  }

  private async swap(request: CommandRequest, reply: CommandReply, resumed?: PendingCommand): Promise<void> {
    const spec = parseSwap(request);
    for (const attachment of [spec.source, ...spec.references]) checkDeclared(attachment, this.imageLimits);
    await this.queue.checkRoom(request.userId);
    await this.recorded(request, reply, resumed, async (command) => {
      const [sourceBlobId, ...referenceBlobIds] = await command.step("blobs", () =>
        this.storeImages(request.userId, [spec.source, ...spec.references]),
      );
      await this.startJob(command, reply, {
        name: "swap.edit",
        title: `🔁 ${this.adapter.mention(request.userId)} asked Photoswap for a “${this.quoted(spec.subject)}” from ${spec.references.length} reference photo(s)`,
        thread: `Photoswap: ${this.shown(spec.subject)}`,
        payload: (origin) => ({
          userId: request.userId,
          origin,
          sourceBlobId,
          referenceBlobIds,
          subject: spec.subject,
          options: {
            seeds: spec.seeds,
            ...(spec.strengthList ? { strengths: spec.strengthList } : spec.strengths),
            ...requestedSizeOptions(spec.size),
          },
        }),
      });
    });
  }

  /**
   * Checks and converts every photo before any is stored: a refusal names each bad file on its own line
   * (the sender fixes them all at once), and a refused command leaves no blob counting against the
   * sender's quota.
   */
  private async storeImages(userId: string, attachments: IncomingAttachment[]): Promise<string[]> {
    const checked = await Promise.allSettled(
      attachments.map((attachment) => fetchImage(this.adapter, attachment, this.imageLimits, userId)),
    );
    const refusals: string[] = [];
    for (const result of checked) {
      if (result.status === "fulfilled") continue;
      if (!(result.reason instanceof UserFacingError)) throw result.reason;
      refusals.push(result.reason.message);
    }
    if (refusals.length > 0) throw new UserFacingError(refusals.join("\n"));
    const photos = checked.map((result) => (result as PromiseFulfilledResult<Uint8Array>).value);
    const ids: string[] = [];
    for (const [i, attachment] of attachments.entries()) {
      ids.push(
        await this.blobs.put(photos[i] as Uint8Array, {
          userId,
          kind: "image",
          label: `\`${attachment.option}\` (${attachment.filename})`,
        }),
      );
    }
    return ids;
  }

  /**
   * Validates the payload, answers in public, opens the thread, posts the progress message and
   * enqueues: the job's origin names that message, so any bot process can keep it up to date. Should
   * anything fail after the public answer, the answer says so instead of promising an edit. Each step
   * is recorded, so a resumed command does not do it again; the progress post names the job
   * (PostOnce), for the case where its process died after the platform took it but before it heard.
   */
  private async startJob(
    command: PendingCommand,
    reply: CommandReply,
    job: { name: JobName; title: string; thread: string; payload: (origin: ChatOrigin) => unknown },
  ): Promise<void> {
    const { request } = command;
    // Everything but the origin's ids is known now: a bad payload is refused before anything is posted.
    parsePayload(
      job.name,
      job.payload({ platform: this.adapter.platform, ...request.conversation, message: "0" }),
    );
    const title = fitText(job.title, this.adapter.limits.maxTextLength);
    // Named like the progress post: where the answer is a plain post (Slack; on Discord a resumed command
    // past its interaction's token), a process that died after the platform took it but before it heard
    // leaves it to be found.
    const answer = await command.step("answer", () =>
      reply.public({ text: title, once: { job: command.jobId, role: "answer", retry: command.resumed } }),
    );
    try {
      const conversation = await command.step("thread", async () => {
        const opened = await this.adapter.openThread(answer, job.thread);
        // Why there is no thread stays readable in its own message; the progress message changes all the time.
        if (opened.fallbackNote)
          await this.adapter.post(opened.conversation, { text: `ℹ️ ${opened.fallbackNote}` });
        return opened.conversation;
      });
      const progress = await command.step("progress", () =>
        this.adapter.post(conversation, {
          text: "🕒 Sending to the queue…",
          once: { job: command.jobId, role: "progress", retry: command.resumed },
        }),
      );
      await this.progress.adopt(progress);
      const origin: ChatOrigin = { platform: this.adapter.platform, ...conversation, message: progress.id };
      const jobId = await this.enqueueOn(progress, job.name, job.payload(origin), { jobId: command.jobId });
      if (jobId) this.log.info({ jobId, name: job.name, userId: request.userId }, "job started from chat");
    } catch (error) {
      const why =
        error instanceof UserFacingError
          ? error.message
          : "something went wrong on my side (it has been logged); please try again later";
      await this.adapter
        .editMessage(answer, {
          text: fitText(`${title}\n❌ Not started: ${this.shown(why)}`, this.adapter.limits.maxTextLength),
        })
        .catch((err: unknown) =>
          this.log.warn({ err }, "could not say on the answer that the job did not start"),
        );
      throw error;
    }
  }

  /** Queues a job shown on `progress`; refused (the user's cap, a bad payload): says so there, undefined. */
  private async enqueueOn(
    progress: MessageRef,
    name: JobName,
    input: unknown,
    fixed?: { jobId: string; whenRefused?: string },
  ): Promise<string | undefined> {
    try {
      const { jobId, position } = await this.queue.enqueue(name, input, fixed ? { jobId: fixed.jobId } : {});
      this.showPosition(jobId, progress, position);
      return jobId;
    } catch (error) {
      if (!(error instanceof UserFacingError)) throw error;
      await this.progress.finish(
        progress,
        `❌ Not started: ${this.shown(error.message)}${fixed?.whenRefused ? ` ${fixed.whenRefused}` : ""}`,
      );
      return undefined;
    }
  }

  /** Cancels the user's jobs: in a job's thread only that thread's, elsewhere all of them. */
  private async cancel(request: CommandRequest, reply: CommandReply): Promise<void> {
    const listed = await this.queue.listForUser(request.userId);
    const jobs = await Promise.all(
      listed.map(async ({ jobId, name }) => {
        const job = await this.queue.queue.getJob(jobId);
        return { jobId, name, origin: (job?.data as { origin?: ChatOrigin } | undefined)?.origin };
      }),
    );
    const thread = request.conversation.thread;
    const chosen = thread ? jobs.filter((j) => j.origin?.thread === thread) : jobs;
    // In a thread, /cancel means that thread's edit. With none of the user's there (another user's edit,
    // theirs already done) it cancels nothing: falling back to all of them stopped edits they never meant.
    if (thread && chosen.length === 0 && jobs.length > 0) {
      return reply.private(
        `You have no edits queued or running in this thread. Run \`/cancel\` outside a thread to cancel all of yours (${jobs.length}).`,
      );
    }
    if (chosen.length === 0) return reply.private("You have no edits queued or running.");
    const lines: string[] = [];
    for (const { jobId, name, origin } of chosen) {
      const outcome = await this.queue.cancel(jobId, request.userId);
      const said = {
        removed: "cancelled",
        cancelling: "stopping after the current step",
        finished: "already finished",
      };
      lines.push(`• ${name} (job ${jobId}): ${said[outcome]}`);
      // A removed job never runs, so no `failed` event will update its progress message: do it here.
      if (outcome === "removed" && origin?.message) {
        await this.finishProgress(jobId, this.progressRef(origin), "🛑 Cancelled before it started.");
      }
    }
    await reply.private(lines.join("\n"));
  }

  private async showQueue(request: CommandRequest, reply: CommandReply): Promise<void> {
    const jobs = await this.queue.listForUser(request.userId);
    if (jobs.length === 0) return reply.private("You have no edits queued or running.");
    const lines: string[] = [];
    for (const position of jobs) {
      const job = position.state === "active" ? await this.queue.queue.getJob(position.jobId) : undefined;
      const progress = job?.progress as JobProgress | undefined;
      lines.push(queueLine(position, typeof progress === "object" ? progress : undefined));
    }
    await reply.private(fitText(lines.join("\n"), this.adapter.limits.maxTextLength));
  }

  /**
   * Shows where a new job stands and, while it waits, refreshes its place in line until it starts
   * (its first progress event) or ends.
   */
  private showPosition(jobId: string, ref: MessageRef, position: JobPosition): void {
    const show = (p: JobPosition) => this.progress.update(ref, { text: positionText(p) });
    show(position);
    if (position.state === "active") return;
    let last = positionText(position);
    const timer = setInterval(() => {
      void this.queue
        .position(jobId)
        .then((now) => {
          if (!this.waiting.has(jobId)) return;
          if (now.state !== "waiting" && now.state !== "waiting-for-concept" && now.state !== "delayed") {
            this.stopWatching(jobId);
          } else if (positionText(now) !== last) {
            last = positionText(now);
            show(now);
          }
        })
        .catch((err: unknown) => this.log.warn({ err, jobId }, "queue position lookup failed"));
    }, this.options.positionRefreshMs ?? 15_000);
    timer.unref();
    this.waiting.set(jobId, timer);
  }

  private stopWatching(jobId: string): void {
    clearInterval(this.waiting.get(jobId));
    this.waiting.delete(jobId);
  }

  // ── queue events ──────────────────────────────────────────────────────────────────────────────

  private progressRef(origin: ChatOrigin): MessageRef {
    return { conversation: this.conversationOf(origin), id: origin.message ?? "" };
  }

  private conversationOf(origin: ChatOrigin): Conversation {
    return origin.thread ? { channel: origin.channel, thread: origin.thread } : { channel: origin.channel };
  }

  private onProgress({ jobId, name, data, progress }: Events["progress"]): void {
    this.stopWatching(jobId);
    const ref = this.progressRef(data.origin);
    if (!ref.id) return;
    const previewId = progress.previewBlobId;
    const maxBytes = this.adapter.limits.maxUploadBytes;
    this.progress.update(ref, {
      text: progressText(name, progress),
      stage: progress.stage,
      ...(previewId
        ? {
            preview: {
              id: previewId,
              image: async () => {
                const bytes = await this.blobs.get(previewId);
                return bytes ? fitUpload({ name: "preview.png", bytes }, maxBytes) : undefined;
              },
            },
          }
        : {}),
    });
  }

  /**
   * The job's last word on its progress message. Throws only PlatformUnavailableError (the job's end is
   * then delivered again later): any other failure is logged, and the result posted regardless.
   */
  private async finishProgress(jobId: string, ref: MessageRef, text: string, once?: PostOnce): Promise<void> {
    this.stopWatching(jobId);
    if (!ref.id) return;
    try {
      await this.progress.finish(ref, text, once);
    } catch (err) {
      if (err instanceof PlatformUnavailableError) throw err;
      // Deleted by a moderator, or the bot lost access to it: the result goes out regardless.
      this.log.warn({ err, jobId, message: ref.id }, "could not update the progress message");
    }
  }

  private async onFailed({
    jobId,
    name,
    data,
    message,
    cancelled,
    redelivery,
  }: Events["failed"]): Promise<void> {
    // A concept child fails its swap.edit parent with it: the parent reports, once (the queue gives it the
    // child's reason).
    if (name === "swap.concept") return;
    this.log.info({ jobId, name, cancelled }, "job failed");
    const text = cancelled ? "🛑 Cancelled." : `❌ ${this.shown(message)}`;
    await this.finishProgress(
      jobId,
      this.progressRef(data.origin),
      fitText(text, this.adapter.limits.maxTextLength),
      postOnce(jobId, "last", redelivery),
    );
  }

  private async onCompleted(event: Events["completed"]): Promise<void> {
    const { jobId, data } = event;
    this.log.info({ jobId, name: event.name }, "posting job result");
    switch (event.name) {
      case "imagic.train": {
        const payload = event.data as unknown as JobInput<"imagic.train">;
        const result = event.result as JobResult<"imagic.train">;
        return this.finishWithOffer(event, "✅ Fine-tuned on your photo.", result, {
          kind: "seed",
          command: "imagic",
          prompt: payload.prompt,
          stateBlobId: result.stateBlobId,
          sweep: this.sweepSettings(payload.options),
        });
      }
      case "imagic.render":
        return this.finishWithOffer(event, "✅ Rendered.", event.result as JobResult<"imagic.render">, {
          kind: "final",
          command: "imagic",
          prompt: (await this.promptOf(data.origin)) ?? "",
        });
      case "swap.edit": {
        const payload = event.data as unknown as JobInput<"swap.edit">;
        return this.finishWithOffer(event, "✅ Swapped.", event.result as JobResult<"swap.edit">, {
          kind: "final",
          command: "swap",
          prompt: payload.subject,
        });
      }
      default:
        this.log.debug({ jobId }, "no chat result for this job type");
    }
  }

  /**
   * A finished job's last word on its progress message, and its grid offered for `pick`s. The grid does
   * not wait for that edit (which may wait for another process, or for the platform).
   */
  private async finishWithOffer(
    { jobId, data, redelivery }: Events["completed"],
    text: string,
    result: { gridBlobId: string; images: Choice[] },
    pick: Pick<PickRecord, "kind" | "command" | "prompt" | "stateBlobId" | "sweep">,
  ): Promise<void> {
    const finished = this.finishProgress(
      jobId,
      this.progressRef(data.origin),
      text,
      postOnce(jobId, "last", redelivery),
    );
    const { kind, command, prompt, ...seedPick } = pick;
    const offered = this.offer(
      result.gridBlobId,
      {
        kind,
        command,
        userId: data.userId,
        conversation: this.conversationOf(data.origin),
        prompt,
        choices: result.images,
        ...seedPick,
      },
      (role) => postOnce(jobId, role, redelivery),
    );
    // Both settle before either's failure is thrown; the platform being down comes first, so that the
    // whole end is delivered again (every post of it is single) even when the other part failed for good.
    const failures = (await Promise.allSettled([offered, finished])).flatMap((outcome) =>
      outcome.status === "rejected" ? [outcome.reason as unknown] : [],
    );
    if (failures.length > 0)
      throw failures.find((err) => err instanceof PlatformUnavailableError) ?? failures[0];
  }

  /** The prompt a render continues, kept under its progress message (known before the job id). */
  private async promptOf(origin: ChatOrigin): Promise<string | undefined> {
    return (
      (await this.options.redis.get(renderPromptKey(this.adapter.platform, origin.message ?? ""))) ??
      undefined
    );
  }

  /**
   * Posts a result grid with number reactions and remembers what each number picks. Every step may be
   * done again by a redelivery: the post is single (`once`), the record and the reactions are the same.
   */
  private async offer(
    gridBlobId: string,
    record: PickRecord,
    once?: (role: string) => PostOnce,
  ): Promise<void> {
    const mention = this.adapter.mention(record.userId);
    const grid = await this.blobs.get(gridBlobId);
    if (!grid) {
      return this.postExpired(record, "the result", once?.("expired"));
    }
    const lines = this.offerText(record);
    const image = await fitUpload({ name: "grid.png", bytes: grid }, this.adapter.limits.maxUploadBytes);
    const message = await this.adapter.post(record.conversation, {
      text: fitText(`${mention} ${lines}`, this.adapter.limits.maxTextLength),
      images: [image],
      notify: [record.userId],
      ...(once ? { once: once("grid") } : {}),
    });
    // Saved before the reactions go up: a quick user may react while they are still being added.
    await this.picks.save(message.id, record);
    await this.adapter.addReactions(message, numberEmojis(record.choices.length));
  }

  /** Says that `what` a pick needs has outlived the blob TTL, and how to start again. */
  private async postExpired(record: PickRecord, what: string, once?: PostOnce): Promise<void> {
    await this.adapter.post(record.conversation, {
      ...(once ? { once } : {}),
      text: expiredText(
        this.adapter.mention(record.userId),
        what,
        this.blobs.limits.ttlSeconds,
        record.command,
      ),
      notify: [record.userId],
    });
  }

  /** The sweep a seed pick renders: the preset's η values, with the first grid's sampling settings. */
  private sweepSettings(options: JobInput<"imagic.train">["options"]): NonNullable<PickRecord["sweep"]> {
    const preset = getPreset(options?.preset ?? "balanced");
    return {
      etas: preset.render.etas,
      guidance: options?.guidance ?? preset.render.guidance,
      steps: options?.steps ?? preset.render.steps,
    };
  }

  private offerText(record: PickRecord): string {
    const sweep = record.sweep?.etas ?? [];
    if (record.kind === "seed") {
      const eta = record.choices[0]?.eta;
      return (
        `**Pick a seed** for “${this.quoted(record.prompt)}”${eta === undefined ? "" : ` (${etaLabel(eta)})`}: react with a tile's ` +
        `number and I render it from a weak to a strong edit (${etaLabel(sweep[0] ?? 0)} → ${etaLabel(sweep.at(-1) ?? 0)}).\n` +
        choiceLine(record.choices, (c) => `seed ${c.seed}`)
      );
    }
    const describe =
      record.command === "imagic"
        ? (c: Choice) => `${etaLabel(c.eta ?? 0)}, seed ${c.seed}`
        : (c: Choice) => c.label ?? `seed ${c.seed}`;
    const legend = record.command === "swap" ? `\n${SWAP_LEGEND}` : "";
    return `**Pick the final image**: react with its number.\n${choiceLine(record.choices, describe)}${legend}`;
  }

  // ── picks ─────────────────────────────────────────────────────────────────────────────────────

  async handleReaction(event: ReactionEvent): Promise<void> {
    const record = await this.picks.get(event.message.id);
    if (!record) return;
    if (event.userId !== record.userId) {
      this.log.debug({ message: event.message.id, userId: event.userId }, "reaction by someone else ignored");
      return;
    }
    // Reactions by name are Slack's spelling; elsewhere a name is a custom emoji (reactions.ts).
    const index = choiceIndex(event.emoji, record.choices.length, this.adapter.platform === "slack");
    const choice = index === undefined ? undefined : record.choices[index];
    if (index === undefined || !choice) return;
    const pick = { messageId: event.message.id, index };
    const claim = await this.picks.take(pick);
    if (claim) await this.actOnPick(pick, record, choice, claim === "retry");
  }

  /**
   * Renders a seed pick's sweep or posts a final pick's image, under the pick's claim. Every step may be
   * done again by a process that takes over the claim (`retry`): the posts are single (PostOnce), the
   * render job has a fixed id. The claim is done only after, so a process that dies midway loses nothing.
   */
  private async actOnPick(pick: PickRef, record: PickRecord, choice: Choice, retry: boolean): Promise<void> {
    const id = pickId(this.adapter.platform, pick);
    this.picking.add(id);
    try {
      const acted = await this.picks.whileHeld(
        pick,
        async () => {
          if (record.kind === "seed") return this.renderSweep(record, choice, id, retry);
          await this.postFinal(record, choice, postOnce(id, "final", retry));
          return true;
        },
        (err) => this.log.warn({ err, pick }, "could not renew a pick's claim"),
      );
      // A sweep the queue refused (the user's cap) is not a pick used up: the reaction may be made again.
      await (acted ? this.picks.confirm(pick) : this.picks.release(pick));
    } catch (error) {
      await this.picks.release(pick);
      if (!(error instanceof UserFacingError)) throw error;
      await this.adapter.post(record.conversation, {
        text: `⚠️ ${this.adapter.mention(record.userId)} ${this.shown(error.message)}`,
        notify: [record.userId],
      });
    } finally {
      this.picking.delete(id);
    }
  }

  /** Acts on the picks whose process died before it was done with them (the user's reaction stands). */
  private async retryAbandonedPicks(): Promise<void> {
    for (const pick of await this.picks.abandoned()) {
      if (this.picking.has(pickId(this.adapter.platform, pick))) continue;
      const record = await this.picks.get(pick.messageId);
      const choice = record?.choices[pick.index];
      if (!record || !choice) {
        await this.picks.drop(pick);
        continue;
      }
      if (!(await this.picks.take(pick))) continue;
      this.log.info({ pick }, "acting on a pick again: the process that took it died before it was done");
      await this.actOnPick(pick, record, choice, true).catch((err: unknown) =>
        this.log.error({ err, pick }, "acting on an abandoned pick failed"),
      );
    }
  }

  /**
   * Queues the η sweep of a seed pick as job `id` (a fixed id: queued once however often this runs);
   * false when the queue refused it.
   */
  private async renderSweep(
    record: PickRecord,
    choice: Choice,
    id: string,
    retry: boolean,
  ): Promise<boolean> {
    const mention = this.adapter.mention(record.userId);
    const stateBlobId = record.stateBlobId ?? "";
    if ((await this.blobs.touch([stateBlobId])).length > 0) {
      await this.postExpired(record, "the fine-tune of this edit", postOnce(id, "expired", retry));
      return true;
    }
    const { etas, guidance, steps } = record.sweep ?? this.sweepSettings(undefined);
    const progress = await this.adapter.post(record.conversation, {
      text: `🕒 ${mention} rendering seed ${choice.seed} at ${etas.map(etaLabel).join(", ")}…`,
      once: postOnce(id, "progress", retry),
    });
    await this.progress.adopt(progress);
    const origin: ChatOrigin = {
      platform: this.adapter.platform,
      ...record.conversation,
      message: progress.id,
    };
    const payload: JobInput<"imagic.render"> = {
      userId: record.userId,
      origin,
      stateBlobId,
      seeds: [choice.seed],
      etas,
      guidance,
      steps,
    };
    await this.options.redis.set(
      renderPromptKey(this.adapter.platform, progress.id),
      record.prompt,
      "EX",
      30 * 86_400,
    );
    const jobId = await this.enqueueOn(progress, "imagic.render", payload, {
      jobId: id,
      whenRefused: "Remove your reaction and react again to try once more.",
    });
    return jobId !== undefined;
  }

  private async postFinal(record: PickRecord, choice: Choice, once: PostOnce): Promise<void> {
    const mention = this.adapter.mention(record.userId);
    const bytes = await this.blobs.get(choice.blobId);
    if (!bytes) {
      return this.postExpired(record, "this image", { ...once, role: "expired" });
    }
    const label =
      choice.label ??
      (choice.eta === undefined ? `seed ${choice.seed}` : `seed ${choice.seed}, ${etaLabel(choice.eta)}`);
    const name = `${record.command}-seed${choice.seed}${choice.eta === undefined ? "" : `-eta${choice.eta}`}.png`;
    const image = await fitUpload({ name, bytes }, this.adapter.limits.maxUploadBytes);
    await this.adapter.post(record.conversation, {
      text: fitText(
        `🖼️ ${mention} **Final** for “${this.quoted(record.prompt)}” — ${label}, full resolution.`,
        this.adapter.limits.maxTextLength,
      ),
      images: [image],
      once,
    });
  }
}

/** One post of a job's end (roles "grid", "expired", "last") or of a pick ("progress", "final", "expired"). */
const postOnce = (job: string, role: string, retry: boolean): PostOnce => ({ job, role, retry });

/**
 * A pick, as its posts and its render job are named: the same for every attempt at it. BullMQ job ids
 * may hold no ':', which Slack's message ids ("channel:ts") do: escaped (%3A), so no two picks collide.
 */
const pickId = (platform: string, { messageId, index }: PickRef) =>
  `pick-${platform}-${encodeURIComponent(messageId)}-${index}`;

const renderPromptKey = (platform: string, messageId: string) =>
  `pe:chat:render-prompt:${platform}:${messageId}`;
