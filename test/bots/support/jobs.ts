// What the chat tests read back from the shared queue.
import type { QueueClient } from "../../../src/queue/client.js";
import type { ChatOrigin } from "../../../src/queue/jobs.js";

/** The ids of the η sweep render jobs in the queue, in whatever state (picks queue them). */
export async function renderJobIds(queue: QueueClient): Promise<string[]> {
  const jobs = await queue.queue.getJobs([
    "completed",
    "active",
    "waiting",
    "prioritized",
    "delayed",
    "failed",
  ]);
  return jobs.filter((job) => job.name === "imagic.render").map((job) => String(job.id));
}

/** The ids of the jobs queued for a thread (their origin's), in whatever state. */
export async function jobIdsInThread(queue: QueueClient, thread: string): Promise<string[]> {
  const jobs = await queue.queue.getJobs();
  return jobs
    .filter((job) => (job.data as { origin: ChatOrigin }).origin.thread === thread)
    .map((job) => String(job.id));
}
