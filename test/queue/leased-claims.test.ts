// A claim's ref is written into Redis as a member string and read back from the abandoned claims: the
// two must round-trip, also where the ref holds ':' (Slack's message ids, "channel:ts"), and the members
// must stay what earlier versions wrote, or claims pending across an upgrade would be read back wrong.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type PickRef, pickRefs } from "../../src/commands/picks.js";
import { type DeliveryRef, deliveryRefs } from "../../src/queue/delivery.js";
import { LeasedClaims, pairCodec } from "../../src/queue/leased-claims.js";
import { startTestRedis, type TestRedis } from "../helpers/redis.js";

describe("claim codecs", () => {
  it("round-trips pick refs whose message id holds ':'", () => {
    const refs: PickRef[] = [
      { messageId: "C0123:1733321000.000100", index: 3 },
      { messageId: "a:b:c:", index: 0 },
      { messageId: "1181234567890123456", index: 11 },
    ];
    for (const ref of refs) expect(pickRefs.decode(pickRefs.encode(ref))).toEqual(ref);
    expect(pickRefs.encode({ messageId: "C0123:1733321000.000100", index: 3 })).toBe(
      "C0123:1733321000.000100:3",
    );
  });

  it("round-trips delivery refs, as `<jobId>:<createdAt>`", () => {
    const refs: DeliveryRef[] = [
      { jobId: "42", createdAt: "1733321000123" },
      { jobId: "pick-slack-C0123%3A1733321000.000100-2", createdAt: "1733321000123" },
    ];
    for (const ref of refs) expect(deliveryRefs.decode(deliveryRefs.encode(ref))).toEqual(ref);
    expect(deliveryRefs.encode({ jobId: "42", createdAt: "1733321000123" })).toBe("42:1733321000123");
  });

  it("refuses a tail with ':', which would split back wrongly", () => {
    const codec = pairCodec<[string, string]>(
      (pair) => pair,
      (head, tail) => [head, tail],
    );
    expect(() => codec.encode(["a", "b:c"])).toThrow(/no ':'/);
    expect(codec.decode(codec.encode(["a:b", "c"]))).toEqual(["a:b", "c"]);
  });
});

describe("LeasedClaims over refs", () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await startTestRedis();
  });
  afterAll(() => redis.stop());

  // A lease this short runs out between two awaits; the wait after it is what a dead holder leaves.
  const LEASE_MS = 50;
  const leaseRunsOut = () => new Promise((resolve) => setTimeout(resolve, 2 * LEASE_MS));

  it("gives an abandoned claim back as the ref it was taken on", async () => {
    const claims = new LeasedClaims(
      redis.client(),
      (m) => `test:picked:${m}`,
      "test:picking",
      LEASE_MS,
      pickRefs,
    );
    const pick: PickRef = { messageId: "C0123:1733321000.000100", index: 2 };
    expect(await claims.take(pick)).toBe("first");
    await leaseRunsOut();
    expect(await claims.abandoned()).toEqual([pick]);
    expect(await claims.take(pick)).toBe("retry");
    await claims.confirm(pick);
    expect(await claims.abandoned()).toEqual([]);
    expect(await claims.take(pick)).toBeUndefined();
  });

  it("takes plain string ids as their own members when given no codec", async () => {
    const claims = new LeasedClaims(redis.client(), (id) => `test:claim:${id}`, "test:pending", LEASE_MS);
    expect(await claims.take("cmd:1")).toBe("first");
    await leaseRunsOut();
    expect(await claims.abandoned()).toEqual(["cmd:1"]);
    // @ts-expect-error a ref other than a plain string needs its codec (typecheck fails if it need not)
    new LeasedClaims<PickRef>(redis.client(), (m) => m, "test:unused", LEASE_MS);
  });
});
