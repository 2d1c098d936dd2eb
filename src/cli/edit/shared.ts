// What the `edit` commands share: numeric flags, reading input files, and progress bars per stage.
import { readFileSync } from "node:fs";
import { SingleBar } from "cli-progress";
import { formatSeconds } from "../../engine/progress.js";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";

const log = childLogger("edit-cli");

/** A numeric flag, or undefined when absent; a clear error naming the flag when it is not a number. */
export function num(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n))
    throw new UserFacingError(`${flag} must be a number (got "${v}")`);
  return n;
}

export function readInput(file: string, flag: string): Uint8Array {
  try {
    return readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === "ENOENT" ? "no such file" : code === "EISDIR" ? "it is a folder" : (e as Error).message;
    throw new UserFacingError(`cannot read ${flag} ${file}: ${why}`);
  }
}

/** A step of a multi-stage run, as the pipelines report it. */
export interface StageProgress {
  stage: string;
  step: number;
  total: number;
  loss?: number;
  etaSeconds?: number;
}

/** One bar per stage on a terminal; a log line every 10 % otherwise. Stages in `quiet` are not shown. */
export function progressReporter(quiet: readonly string[] = []): {
  onProgress: (p: StageProgress) => void;
  stop: () => void;
} {
  const tty = process.stderr.isTTY;
  let bar: SingleBar | undefined;
  let stage = "";
  let lastTenth = -1;
  return {
    onProgress(p) {
      if (quiet.includes(p.stage)) return;
      if (p.stage !== stage) {
        bar?.stop();
        stage = p.stage;
        lastTenth = -1;
        if (tty) {
          bar = new SingleBar({
            format: `${p.stage.padEnd(9)} |{bar}| {value}/{total}  loss {loss}  ETA {left}`,
            stream: process.stderr,
            hideCursor: true,
          });
          bar.start(p.total, 0, { loss: "-", left: "…" });
        }
      }
      const payload = {
        loss: p.loss === undefined ? "-" : p.loss.toFixed(4),
        left: p.etaSeconds === undefined ? "…" : formatSeconds(p.etaSeconds),
      };
      if (bar) {
        bar.setTotal(p.total);
        bar.update(p.step, payload);
      } else {
        const tenth = Math.floor((10 * p.step) / Math.max(1, p.total));
        if (tenth !== lastTenth) {
          lastTenth = tenth;
          log.info(
            { stage: p.stage, step: p.step, total: p.total, loss: p.loss, eta: payload.left },
            "progress",
          );
        }
      }
    },
    stop: () => bar?.stop(),
  };
}
