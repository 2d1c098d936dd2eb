import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { UserFacingError } from "../../src/errors.js";
import { BlobStore } from "../../src/queue/blobs.js";
import { startTestRedis, type TestRedis } from "../helpers/redis.js";

let redis: TestRedis;
let blobs: BlobStore;
beforeAll(async () => {
  redis = await startTestRedis();
  blobs = new BlobStore(redis.client(), { ttlSeconds: 60, maxBytes: 1000, userQuotaBytes: 2500 });
});
afterAll(() => redis.stop());

const bytes = (n: number, fill: number) => new Uint8Array(n).fill(fill);

describe("BlobStore", () => {
  it("stores content under its sha256 and gives it back", async () => {
    const data = bytes(100, 7);
    const id = await blobs.put(data, { userId: "a", kind: "image" });
    expect(id).toBe(createHash("sha256").update(data).digest("hex"));
    expect(new Uint8Array((await blobs.get(id)) as Buffer)).toEqual(data);
    expect(await blobs.get("0".repeat(64))).toBeUndefined();
  });

  it("refuses a blob over the per-file limit, naming it and the limit", async () => {
    await expect(blobs.put(bytes(1001, 1), { userId: "a", kind: "image", label: "big.png" })).rejects.toThrow(
      new UserFacingError("big.png is 1001 B; the limit per file is 1000 B"),
    );
  });

  it("counts a user's uploads against the quota, a re-upload once, engine outputs not at all", async () => {
    const user = "quota-user";
    await blobs.put(bytes(1000, 1), { userId: user, kind: "image" });
    await blobs.put(bytes(1000, 2), { userId: user, kind: "image" });
    await blobs.put(bytes(1000, 2), { userId: user, kind: "image" }); // same content: no extra bytes
    expect(await blobs.usage(user)).toBe(2000);
    await expect(
      blobs.put(bytes(1000, 3), { userId: user, kind: "image", label: "photo 3" }),
    ).rejects.toThrow(
      /^photo 3 \(1000 B\) does not fit: you already have 2.0 KiB of files stored and the limit is 2.4 KiB per user/,
    );
    await blobs.put(bytes(1000, 4), { userId: user, kind: "result", quota: false });
    expect(await blobs.usage(user)).toBe(2000);
    expect(await blobs.usage("someone-else")).toBe(0);
  });

  it("tells a user over the quota when there is room again: files count until they expire, jobs done or not", async () => {
    const user = "room-user";
    const store = (ttlSeconds: number) =>
      new BlobStore(redis.client(), { ttlSeconds, maxBytes: 1000, userQuotaBytes: 2000 });
    await store(60).put(bytes(600, 21), { userId: user, kind: "image" });
    await store(3600).put(bytes(600, 22), { userId: user, kind: "image" });
    await store(7200).put(bytes(600, 23), { userId: user, kind: "image" });
    // 1800 B stored: 1000 B more fit once the first two (expiring in 1 min and 1 h) are gone.
    await expect(
      store(7200).put(bytes(1000, 24), { userId: user, kind: "image", label: "photo.png" }),
    ).rejects.toThrow(
      /^photo\.png \(1000 B\) does not fit: you already have 1.8 KiB of files stored and the limit is 2.0 KiB per user; files are kept 2 h from when they were sent, even once their jobs have finished, so there is room for it in (1 h 00 min|59 min 59 s)$/,
    );
  });

  it("expires blobs after the TTL and says so in words; touch extends a live blob", async () => {
    const short = new BlobStore(redis.client(), { ttlSeconds: 1, maxBytes: 1000, userQuotaBytes: 0 });
    const gone = await short.put(bytes(10, 9), { userId: "b", kind: "image", quota: false });
    const kept = await short.put(bytes(10, 8), { userId: "b", kind: "image", quota: false });
    expect(await short.touch([kept], 30)).toEqual([]);
    await new Promise((r) => setTimeout(r, 1200));
    expect(await short.get(gone)).toBeUndefined();
    expect(await short.get(kept)).toBeDefined();
    expect(await short.touch([gone, kept])).toEqual([gone]);
    await expect(short.require(gone, "the photo")).rejects.toThrow(
      "the photo is no longer stored (files are kept 1 s); please send it again",
    );
  });

  it("expired uploads stop counting against the quota", async () => {
    const short = new BlobStore(redis.client(), { ttlSeconds: 1, maxBytes: 1000, userQuotaBytes: 1500 });
    await short.put(bytes(1000, 11), { userId: "c", kind: "image" });
    await expect(short.put(bytes(1000, 12), { userId: "c", kind: "image" })).rejects.toThrow(/does not fit/);
    await new Promise((r) => setTimeout(r, 1100));
    await short.put(bytes(1000, 12), { userId: "c", kind: "image" });
    expect(await short.usage("c")).toBe(1000);
  });
});
