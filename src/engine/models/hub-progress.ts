/**
 * Download progress where someone can see it: a caller's callback, a bar on a terminal, or — in Docker,
 * under systemd, anywhere stderr is a pipe — a log line every few seconds with bytes, rate and ETA, so a
 * multi-GB first start does not look hung.
 */
import { SingleBar } from "cli-progress";
import { formatBytes } from "./finetune.js";

export interface DownloadProgress {
  /** The file being downloaded, relative to the repository. */
  file: string;
  /** Bytes of all files to fetch so far / in all (files already cached are not counted). */
  received: number;
  total: number;
  fileReceived: number;
  fileTotal: number;
}

/** Where the hub logs (a pino logger, or a test's recorder). */
export interface HubLog {
  info(fields: object, msg: string): void;
  warn(fields: object, msg: string): void;
}

export interface MeterOptions {
  model: string;
  log: HubLog;
  onProgress?: (p: DownloadProgress) => void;
  /** Time between log lines when stderr is not a terminal (default 5 s). */
  intervalMs?: number;
}

export class DownloadMeter {
  private readonly bar: SingleBar | undefined;
  private readonly started = performance.now();
  private lastLine = this.started;
  /** Bytes received by this run (resumed bytes are not), for the rate. */
  private transferred = 0;

  constructor(
    private readonly total: number,
    private readonly o: MeterOptions,
  ) {
    if (!o.onProgress && process.stderr.isTTY && total > 1e6) {
      this.bar = new SingleBar({
        format: "downloading {bar} {percentage}% | {value}/{total} bytes | {file}",
        hideCursor: true,
        stream: process.stderr,
      });
      this.bar.start(total, 0, { file: "" });
    }
  }

  /** `fresh`: how many of the bytes counted in `p` arrived just now. */
  update(p: DownloadProgress, fresh: number): void {
    this.transferred += fresh;
    if (this.o.onProgress) {
      this.o.onProgress(p);
      return;
    }
    if (this.bar) {
      this.bar.update(p.received, { file: p.file });
      return;
    }
    const now = performance.now();
    if (now - this.lastLine < (this.o.intervalMs ?? 5000)) return;
    this.lastLine = now;
    const seconds = Math.max(now - this.started, 1) / 1000;
    const rate = Math.round(this.transferred / seconds);
    const eta = rate > 0 ? Math.ceil((p.total - p.received) / rate) : undefined;
    const percent = p.total > 0 ? Math.floor((100 * p.received) / p.total) : undefined;
    this.o.log.info(
      {
        model: this.o.model,
        file: p.file,
        received: p.received,
        total: p.total,
        bytesPerSecond: rate,
        etaSeconds: eta,
      },
      `downloading ${this.o.model}: ${formatBytes(p.received)} of ${formatBytes(p.total)}${percent === undefined ? "" : ` (${percent} %)`}, ${formatBytes(rate)}/s, ETA ${eta === undefined ? "unknown" : duration(eta)}`,
    );
  }

  stop(): void {
    this.bar?.stop();
  }
}

function duration(seconds: number): string {
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}
