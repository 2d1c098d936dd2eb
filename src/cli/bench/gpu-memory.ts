/**
 * GPU memory while a benchmark runs: nvidia-smi polled in a child process (device-wide `memory.used`,
 * every 200 ms), each sample booked to the stage the benchmark says it is in. Where memory goes up is
 * then visible per stage (the first CUDA runs of Imagic grew in jumps of tens of GB: arena growth, not a
 * steady need). Nothing is measured where there is no nvidia-smi.
 */
import { type ChildProcess, spawn } from "node:child_process";

export interface StageMemory {
  stage: string;
  /** Device memory in use when the stage began and at its highest, in MiB. */
  startMiB: number;
  peakMiB: number;
}

export class GpuMemorySampler {
  private child: ChildProcess | undefined;
  private closed: Promise<void> = Promise.resolve();
  private current: StageMemory | undefined;
  private readonly stages: StageMemory[] = [];
  private last: number | undefined;
  private overall: number | undefined;

  constructor(command = "nvidia-smi", intervalMs = 200) {
    try {
      this.child = spawn(
        command,
        ["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", String(intervalMs)],
        { stdio: ["ignore", "pipe", "ignore"] },
      );
      const child = this.child;
      this.closed = new Promise((resolve) => {
        child.once("close", () => resolve());
        child.once("error", () => resolve());
      });
      child.on("error", () => {
        this.child = undefined;
      });
      let partial = "";
      this.child.stdout?.on("data", (d: Buffer) => {
        const lines = (partial + d.toString()).split("\n");
        partial = lines.pop() ?? "";
        // One line per GPU per sample: the device this process uses is the first visible one.
        for (const line of lines) {
          const mib = Number(line.trim().split(/\s+/)[0]);
          if (line.trim() && Number.isFinite(mib)) this.sample(mib);
        }
      });
    } catch {
      this.child = undefined;
    }
  }

  private sample(mib: number): void {
    this.last = mib;
    this.overall = Math.max(this.overall ?? 0, mib);
    if (this.current) this.current.peakMiB = Math.max(this.current.peakMiB, mib);
  }

  /** From now on, samples count towards `stage` (a stage named twice gets a second row). */
  stage(stage: string): void {
    if (this.current?.stage === stage) return;
    const now = this.last ?? 0;
    this.current = { stage, startMiB: now, peakMiB: now };
    this.stages.push(this.current);
  }

  /** The highest sample so far (MiB), undefined without nvidia-smi (or before its first sample). */
  peak(): number | undefined {
    return this.overall;
  }

  byStage(): StageMemory[] {
    return this.overall === undefined ? [] : this.stages.map((s) => ({ ...s }));
  }

  /** "embedding 3.4 → 12.1 GiB, …" */
  summary(): string | undefined {
    const rows = this.byStage();
    if (rows.length === 0) return undefined;
    const gib = (m: number) => (m / 1024).toFixed(1);
    return rows.map((s) => `${s.stage} ${gib(s.startMiB)} → ${gib(s.peakMiB)}`).join(", ");
  }

  /** Stops polling and waits for the last samples. */
  async stop(): Promise<void> {
    this.child?.kill();
    this.child = undefined;
    await this.closed;
  }
}
