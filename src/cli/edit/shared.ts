// What the `edit` commands share: numeric flags, reading input files, and progress bars per stage.
import { readFileSync } from "node:fs";
import { SingleBar } from "cli-progress";
import { appConfig } from "../../config.js";
import { StableDiffusion } from "../../engine/index.js";
import { modelLoadOptions } from "../../engine/load-options.js";
import { formatSeconds } from "../../engine/progress.js";
import { UserFacingError } from "../../errors.js";
import { childLogger } from "../../log.js";
import type { DeviceFlag, DtypeFlag, TrainDtypeFlag } from "../options.js";

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

/**
 * The model an edit runs on: `--model`, else the one a saved file was made on, else MODEL (warning that
 * the default is the tiny test checkpoint). Sessions are built lazily: loading costs little.
 */
export async function openModel(f: {
  model?: string;
  savedOn?: string;
  device?: DeviceFlag;
  dtype?: DtypeFlag;
  trainDtype?: TrainDtypeFlag;
}): Promise<{ sd: StableDiffusion; model: string; fixture: boolean }> {
  const config = appConfig();
  const model = f.model ?? f.savedOn ?? config.model;
  const fixture = !f.model && !f.savedOn && config.modelIsFixture;
  if (fixture) log.warn("MODEL is unset: using the tiny TEST checkpoint, whose images are noise");
  const sd = await StableDiffusion.load(model, {
    ...modelLoadOptions(config),
    device: f.device ?? config.engineDevice,
    dtype: f.dtype ?? config.engineDtype,
    trainDtype: f.trainDtype ?? config.engineTrainDtype,
  });
  return { sd, model, fixture };
}

/** A repeatable flag's values, in order (commander's collector). */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
