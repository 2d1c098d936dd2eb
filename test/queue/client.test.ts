// The client without any worker running: what enqueue accepts and refuses, positions, caps, cancel.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UserFacingError } from "../../src/errors.js";
import type { QueueClient } from "../../src/queue/client.js";
import { cacheConcept } from "../../src/queue/concepts.js";
import { queueKeys } from "../../src/queue/keys.js";
import { type Harness, harness, origin, PHOTO, PHOTO2, TEST_MODEL } from "./support/setup.js";

let h: Harness;
let client: QueueClient;
let photo: string;
let photo2: string;
beforeAll(async () => {
  h = await harness();
  client = await h.client({ limits: { maxQueued: 2 } });
  photo = await h.blobs.put(PHOTO, { userId: "u1", kind: "image" });
  photo2 = await h.blobs.put(PHOTO2, { userId: "u1", kind: "image" });
});
afterAll(() => h.close());

const train = (userId: string, imageBlobId = photo) => ({ userId, origin, imageBlobId, prompt: "a dog" });
const render = (userId: string) => ({ userId, origin, stateBlobId: photo, seeds: [1], etas: [1] });

async function drain(): Promise<void> {
  await client.queue.obliterate({ force: true });
  await h.redis.client().flushall();
  photo = await h.blobs.put(PHOTO, { userId: "u1", kind: "image" });
  photo2 = await h.blobs.put(PHOTO2, { userId: "u1", kind: "image" });
}

describe("enqueue refuses bad input with a message, and enqueues nothing", () => {
  it("unknown job types, malformed payloads and blobs that are not (or no longer) stored", async () => {
    await expect(client.enqueue("imagic.upscale", train("u1"))).rejects.toThrow(
      /unknown job type "imagic.upscale"/,
    );
    await expect(client.enqueue("imagic.train", { ...train("u1"), prompt: "" })).rejects.toThrow(
      /^invalid imagic.train request: prompt: /,
    );
    await expect(client.enqueue("imagic.train", train("u1", "f".repeat(64)))).rejects.toThrow(
      new UserFacingError("the photo is no longer stored (files are kept 1 h); please send it again"),
    );
    await expect(
      client.enqueue("swap.edit", {
        userId: "u1",
        origin,
        sourceBlobId: photo,
        referenceBlobIds: [photo2, "e".repeat(64)],
        subject: "cat",
      }),
    ).rejects.toThrow(/^reference photo 2 is no longer stored/);
    expect(await client.queue.count()).toBe(0);
  });
});

describe("caps, priorities and positions", () => {
  it("refuses a user's job over the cap and accepts it again once one is cancelled", async () => {
    await drain();
    const first = await client.enqueue("imagic.train", train("capped"));
    await client.enqueue("imagic.render", render("capped"));
    await expect(client.enqueue("imagic.render", render("capped"))).rejects.toThrow(
      "you already have 2 jobs in the queue, the limit is 2; wait for one to finish or cancel one",
    );
    await client.enqueue("imagic.render", render("someone-else"));
    expect(await client.cancel(first.jobId, "capped")).toBe("removed");
    await client.enqueue("imagic.render", render("capped"));
    expect((await client.listForUser("capped")).map((j) => j.name)).toEqual([
      "imagic.render",
      "imagic.render",
    ]);
  });

  it("orders renders before training and one user's second job behind others' first", async () => {
    await drain();
    const t1 = await client.enqueue("imagic.train", train("u1"));
    const r2 = await client.enqueue("imagic.render", render("u2"));
    const r1 = await client.enqueue("imagic.render", render("u1"));
    const r3 = await client.enqueue("imagic.render", render("u3"));
    const positions = await Promise.all([r2, r3, r1, t1].map((j) => client.position(j.jobId)));
    expect(positions.map((p) => [p.state, p.position])).toEqual([
      ["waiting", 1],
      ["waiting", 2],
      ["waiting", 3],
      ["waiting", 4],
    ]);
    // ETAs add up the typical durations of the jobs ahead (first guesses: render 20 s, train 300 s).
    expect(positions.map((p) => p.etaSeconds)).toEqual([20, 40, 60, 360]);
    expect(r2.position).toEqual({
      jobId: r2.jobId,
      name: "imagic.render",
      state: "waiting",
      position: 1,
      etaSeconds: 20,
    });
  });
});

describe("cancel", () => {
  it("removes a waiting job, and only for its owner", async () => {
    await drain();
    const { jobId } = await client.enqueue("imagic.train", train("u1"));
    await expect(client.cancel(jobId, "intruder")).rejects.toThrow(`job ${jobId} is not yours to cancel`);
    expect(await client.cancel(jobId, "u1")).toBe("removed");
    expect(await client.queue.getJob(jobId)).toBeUndefined();
    expect((await client.position(jobId)).state).toBe("unknown");
    await expect(client.cancel(jobId, "u1")).rejects.toThrow(`there is no job ${jobId}`);
  });
});

describe("swap flows", () => {
  const swap = () => ({
    userId: "u1",
    origin,
    sourceBlobId: photo,
    referenceBlobIds: [photo2],
    subject: "cat",
  });

  it("makes a swap wait for a swap.concept child, unless the concept is cached", async () => {
    await drain();
    const learning = await client.enqueue("swap.edit", swap());
    expect(learning.position.state).toBe("waiting-for-concept");
    expect(learning.position.position).toBe(1);
    const [child] = await client.queue.getJobs(["prioritized"]);
    expect(child?.name).toBe("swap.concept");
    expect(child?.parent?.id).toBe(learning.jobId);

    const concept = await h.blobs.put(Buffer.from("learned concept"), {
      userId: "u1",
      kind: "concept",
      quota: false,
    });
    await cacheConcept(
      h.redis.client(),
      queueKeys(),
      { referenceBlobIds: [photo2], subject: "cat", options: { seed: 0 } },
      TEST_MODEL,
      concept,
      60,
    );
    // Cached for another model: learned again.
    const otherModel = await h.client({ model: "another/model" });
    const elsewhere = await otherModel.enqueue("swap.edit", { ...swap(), userId: "u2" });
    expect(elsewhere.position.state).toBe("waiting-for-concept");
    const cached = await client.enqueue("swap.edit", swap());
    expect(cached.position.state).toBe("waiting");
    const job = await client.queue.getJob(cached.jobId);
    expect(job?.data.conceptBlobId).toBe(concept);
    expect(await client.queue.getJobCounts("prioritized", "waiting-children")).toEqual({
      prioritized: 3,
      "waiting-children": 2,
    });
  });
});
