// Progress lines for the one message each job keeps up to date: stage, step/total, loss, ETA, and the
// queue position while it waits.
import { formatSeconds } from "../engine/progress.js";
import type { JobPosition } from "../queue/client.js";
import type { JobName, JobProgress } from "../queue/jobs.js";

const JOB_LABELS: Record<JobName, string> = {
  "imagic.train": "Imagic fine-tune",
  "imagic.render": "Imagic render",
  "swap.concept": "learning the subject",
  "swap.edit": "Photoswap",
};

/** Stage names the pipelines report, as users should read them; unknown ones are shown as given. */
const STAGE_LABELS: Record<string, string> = {
  embedding: "optimizing the text embedding",
  finetune: "fine-tuning the model",
  "fine-tune": "fine-tuning the model",
  render: "rendering",
  encode: "encoding the photo",
  load: "loading the model",
  invert: "inverting the photo",
  concept: "learning the subject",
  "class-images": "drawing images of the subject's class",
  "null-text": "fitting the photo's null-text embeddings",
  swap: "swapping the subject",
  decode: "decoding the images",
};

function bar(step: number, total: number, width = 12): string {
  const filled = total > 0 ? Math.round((Math.min(step, total) / total) * width) : 0;
  return `${"█".repeat(filled)}${"░".repeat(width - filled)}`;
}

export function progressText(name: JobName, progress: JobProgress): string {
  const stage = STAGE_LABELS[progress.stage] ?? progress.stage;
  const parts = [`⏳ ${JOB_LABELS[name]}: ${stage}`];
  if (progress.total > 0) {
    const percent = Math.floor((Math.min(progress.step, progress.total) / progress.total) * 100);
    parts.push(`\`${bar(progress.step, progress.total)}\` ${progress.step}/${progress.total} (${percent} %)`);
  }
  if (progress.loss !== undefined) parts.push(`loss ${progress.loss.toPrecision(3)}`);
  if (progress.etaSeconds !== undefined) parts.push(`about ${formatSeconds(progress.etaSeconds)} left`);
  return parts.join(" · ");
}

export function positionText(position: JobPosition): string {
  const eta =
    position.etaSeconds === undefined ? "" : ` · done in about ${formatSeconds(position.etaSeconds)}`;
  switch (position.state) {
    case "active":
      return `⏳ ${JOB_LABELS[position.name]}: starting${eta}`;
    case "waiting":
      return position.position === 1
        ? `🕒 ${JOB_LABELS[position.name]}: next in line${eta}`
        : `🕒 ${JOB_LABELS[position.name]}: queued, position ${position.position ?? "?"}${eta}`;
    case "waiting-for-concept":
      return `🕒 ${JOB_LABELS[position.name]}: waiting for the subject to be learned${eta}`;
    case "delayed":
      return `🕒 ${JOB_LABELS[position.name]}: retrying soon after a transient error`;
    case "completed":
      return `✅ ${JOB_LABELS[position.name]}: done`;
    case "failed":
      return `❌ ${JOB_LABELS[position.name]}: failed`;
    default:
      return `❔ ${JOB_LABELS[position.name]}: no longer known to the queue`;
  }
}

/** One /queue line: the job, where it is, and its running stage when it reports one. */
export function queueLine(position: JobPosition, progress: JobProgress | undefined): string {
  if (position.state === "active" && progress)
    return `${progressText(position.name, progress)} (job ${position.jobId})`;
  return `${positionText(position)} (job ${position.jobId})`;
}

const graphemes = new Intl.Segmenter(undefined, { granularity: "grapheme" });

/**
 * Cuts text to a platform's limit (in UTF-16 units, which never undercounts Discord's characters or
 * Slack's), saying so at the end instead of failing the post. The cut falls between graphemes: an emoji,
 * a flag or a letter with its accents is kept whole or left out, never split into invalid text.
 */
export function fitText(text: string, maxLength: number, marker = "… (cut)"): string {
  if (text.length <= maxLength) return text;
  const room = maxLength - marker.length;
  let end = 0;
  for (const { index, segment } of graphemes.segment(text)) {
    if (index + segment.length > room) break;
    end = index + segment.length;
  }
  return text.slice(0, end) + marker;
}
