// Uploads are checked and converted (convert.ts) in decoder processes, one upload at a time each:
// - a deadline holds: a file that takes too long (a scan bomb the marker check missed, a decoder
//   stuck in a loop) is stopped with SIGKILL — a worker thread cannot stop libvips, whose work runs on
//   libuv's thread pool — and the decoder replaced;
// - one upload's decoder text can never reach another upload: libvips keeps a single error buffer per
//   process, which concurrent decodes in one process share;
// - a decoder that crashes on a hostile file takes nothing else down.
// The processes die with their parent (they exit when its IPC channel closes, even after a SIGKILL).
import { type ChildProcess, fork } from "node:child_process";
import { createRequire } from "node:module";
import type { Socket } from "node:net";
import os from "node:os";
import { fileURLToPath } from "node:url";
import { UserFacingError } from "../../errors.js";
import { type ImageLimits, MAX_CHECKS_PER_SENDER } from "../../spec/upload.js";
import { ImageInputError } from "../image.js";
import type { AcceptedPhoto } from "./convert.js";
import { FAILURE_TEXTS } from "./failures.js";

export interface DecodeRequest {
  id: number;
  bytes: Uint8Array;
  limits: ImageLimits;
}

export type DecodeReply =
  | { ready: true }
  | { id: number; photo: AcceptedPhoto }
  | { id: number; refusal: { message: string; detail?: string } }
  | { id: number; error: string };

export interface DecoderPoolOptions {
  /** Decoder processes (default: 2, or 1 on a single core). */
  size?: number;
  /** Uploads that may wait for a free decoder before more are turned away (default 32). */
  maxWaiting?: number;
  /**
   * Uploads of one sender being checked at once, waiting included (default MAX_CHECKS_PER_SENDER): one
   * sender's flood must not fill the line and turn everyone else away.
   */
  maxPerSender?: number;
  /** How long a decoder process may take to start (default 60 s: TypeScript is compiled on the fly in development). */
  startTimeoutMs?: number;
}

interface Job {
  request: DecodeRequest;
  resolve(photo: AcceptedPhoto): void;
  reject(error: Error): void;
}

interface Decoder {
  child: ChildProcess;
  ready: Promise<void>;
  /** The last few KB the process wrote to stderr (why it did not start, or crashed). */
  stderr: string;
  /** Whether it said it was ready: a process that exits before is a start-up failure, not the file's fault. */
  started: boolean;
  job?: Job;
  timer?: NodeJS.Timeout;
}

const HERE = import.meta.url;
const CHILD = fileURLToPath(new URL(HERE.endsWith(".ts") ? "./child.ts" : "./child.js", HERE));
/** In development the child is TypeScript: run it with tsx's loader, as `npm start` runs everything. */
const execArgv = () =>
  HERE.endsWith(".ts") ? ["--import", new URL(`file://${createRequire(HERE).resolve("tsx")}`).href] : [];

export class DecoderPool {
  private readonly size: number;
  private readonly maxWaiting: number;
  private readonly maxPerSender: number;
  private readonly perSender = new Map<string, number>();
  private readonly startTimeoutMs: number;
  private readonly decoders: Array<Decoder | undefined>;
  private readonly waiting: Job[] = [];
  private nextId = 1;
  private closed = false;

  constructor(options: DecoderPoolOptions = {}) {
    this.size = options.size ?? Math.min(2, os.availableParallelism());
    this.maxWaiting = options.maxWaiting ?? 32;
    this.maxPerSender = options.maxPerSender ?? MAX_CHECKS_PER_SENDER;
    this.startTimeoutMs = options.startTimeoutMs ?? 60_000;
    this.decoders = new Array(this.size).fill(undefined);
  }

  /**
   * Checks and converts an upload in a decoder process within `limits.decodeTimeoutMs`; `sender` (a user
   * id) is held to `maxPerSender` uploads at once.
   */
  convert(bytes: Uint8Array, limits: ImageLimits, sender?: string): Promise<AcceptedPhoto> {
    if (this.closed) return Promise.reject(new Error("the image decoders are closed"));
    const held = sender === undefined ? 0 : (this.perSender.get(sender) ?? 0);
    if (held >= this.maxPerSender) {
      return Promise.reject(
        new UserFacingError(
          `You have ${held} photos being checked already (the most at once); send this one again when they are done.`,
        ),
      );
    }
    if (this.waiting.length >= this.maxWaiting) {
      return Promise.reject(
        new UserFacingError("I am checking too many photos right now; try again in a minute."),
      );
    }
    if (sender !== undefined) this.perSender.set(sender, held + 1);
    const release = () => {
      if (sender === undefined) return;
      const left = (this.perSender.get(sender) ?? 1) - 1;
      if (left > 0) this.perSender.set(sender, left);
      else this.perSender.delete(sender);
    };
    return new Promise((resolve, reject) => {
      this.waiting.push({
        request: { id: this.nextId++, bytes, limits },
        resolve: (photo) => {
          release();
          resolve(photo);
        },
        reject: (error) => {
          release();
          reject(error);
        },
      });
      this.pump();
    });
  }

  /** The decoder processes' ids (for tests and the chaos run's orphan check). */
  get pids(): number[] {
    return this.decoders.flatMap((d) => (d?.child.pid ? [d.child.pid] : []));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.waiting.splice(0)) job.reject(new Error("the image decoders are closed"));
    await Promise.all(
      this.decoders.map(async (decoder, slot) => {
        if (!decoder) return;
        this.decoders[slot] = undefined;
        decoder.job?.reject(new Error("the image decoders are closed"));
        clearTimeout(decoder.timer);
        const exited = new Promise((resolve) => decoder.child.once("exit", resolve));
        if (decoder.child.exitCode === null && decoder.child.signalCode === null) {
          decoder.child.kill("SIGKILL");
          await exited;
        }
      }),
    );
  }

  private pump(): void {
    for (let slot = 0; slot < this.size && this.waiting.length > 0; slot++) {
      const decoder = this.decoders[slot] ?? this.spawn(slot);
      if (decoder.job) continue;
      const job = this.waiting.shift() as Job;
      decoder.job = job;
      decoder.child.channel?.ref(); // until it answers: a waiting upload keeps the process alive
      decoder.ready.then(
        () => this.dispatch(slot, decoder, job),
        (error: Error) => this.settle(slot, decoder, () => job.reject(error)),
      );
    }
  }

  private dispatch(slot: number, decoder: Decoder, job: Job): void {
    if (decoder.job !== job) return; // the process exited before it was ready
    const { limits } = job.request;
    decoder.timer = setTimeout(() => {
      const seconds = limits.decodeTimeoutMs / 1000;
      job.reject(
        new ImageInputError(
          `The image takes longer than ${seconds} s to decode (the limit); open it and save it again as a JPEG or PNG.`,
          { detail: `decoder stopped after ${limits.decodeTimeoutMs} ms` },
        ),
      );
      // Out of the pool before it is killed: no other upload may be handed to it meanwhile.
      decoder.job = undefined;
      this.decoders[slot] = undefined;
      decoder.child.kill("SIGKILL");
      this.pump();
    }, limits.decodeTimeoutMs);
    decoder.child.send(job.request);
  }

  /** Frees the slot's job after `outcome` and takes the next one. */
  private settle(slot: number, decoder: Decoder, outcome: () => void): void {
    clearTimeout(decoder.timer);
    decoder.job = undefined;
    decoder.child.channel?.unref();
    outcome();
    if (this.decoders[slot] === decoder) this.pump();
  }

  private spawn(slot: number): Decoder {
    const child = fork(CHILD, [], {
      execArgv: execArgv(),
      serialization: "advanced",
      stdio: ["ignore", "ignore", "pipe", "ipc"],
    });
    // Idle decoders do not keep the process alive (the channel is referenced while a job runs).
    child.unref();
    child.channel?.unref();
    (child.stderr as Socket | null)?.unref();
    let ready!: () => void;
    let failed!: (error: Error) => void;
    const decoder: Decoder = {
      child,
      stderr: "",
      started: false,
      ready: new Promise<void>((resolve, reject) => {
        ready = resolve;
        failed = reject;
      }),
    };
    decoder.ready.catch(() => {}); // observed by the job waiting on it
    const startTimer = setTimeout(() => {
      failed(
        new Error(`the image decoder did not start within ${this.startTimeoutMs} ms: ${decoder.stderr}`),
      );
      child.kill("SIGKILL");
    }, this.startTimeoutMs);
    startTimer.unref();
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (text: string) => {
      decoder.stderr = (decoder.stderr + text).slice(-2048);
    });
    child.on("message", (reply: DecodeReply) => {
      if ("ready" in reply) {
        clearTimeout(startTimer);
        decoder.started = true;
        ready();
        return;
      }
      const job = decoder.job;
      if (!job || job.request.id !== reply.id) return; // the answer to a job already timed out
      this.settle(slot, decoder, () => {
        if ("photo" in reply) job.resolve(reply.photo);
        else if ("refusal" in reply) job.reject(new ImageInputError(reply.refusal.message, reply.refusal));
        else job.reject(new Error(`image decoder: ${reply.error}`));
      });
    });
    child.once("exit", (code, signal) => {
      clearTimeout(startTimer);
      failed(new Error(`the image decoder exited at start (${signal ?? code}): ${decoder.stderr}`));
      if (this.decoders[slot] === decoder) this.decoders[slot] = undefined;
      const job = decoder.job;
      if (job && decoder.started) {
        // It died on this upload (a crash in a decoder, or out of memory): the file is to blame.
        this.settle(slot, decoder, () =>
          job.reject(
            new ImageInputError(FAILURE_TEXTS.damaged, {
              detail: `decoder exited (${signal ?? code}): ${decoder.stderr.trim()}`,
            }),
          ),
        );
      }
      if (!this.closed) this.pump();
    });
    this.decoders[slot] = decoder;
    return decoder;
  }
}

let shared: DecoderPool | undefined;

/** The process's decoder pool, started on first use. */
export function decoderPool(): DecoderPool {
  shared ??= new DecoderPool();
  return shared;
}
