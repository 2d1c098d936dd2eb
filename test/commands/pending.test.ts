// A pending command's record and its claim are written together (src/commands/pending.ts): a bot killed
// while recording an acknowledged command leaves both — another process resumes it once the lease runs
// out — or neither, never a record without a claim (nobody would resume it) nor a claim without a record.
//
// The bot's connection goes through a proxy in this process that forwards only the first n bytes the
// bot sends, then cuts it, as a SIGKILL would: Redis gets those bytes and an end of stream. The test
// cuts at every n from nothing to everything that recording sends, and looks at what Redis kept.
// (Before the fix the record was one MULTI and the claim a second round trip: a cut between the two
// left a record that nobody resumed.)
import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CommandRequest } from "../../src/commands/chat.js";
import { PendingCommands } from "../../src/commands/pending.js";
import { startTestRedis, type TestRedis } from "../helpers/redis.js";

const PLATFORM = "cut";
const LEASE_MS = 30_000;
const CUTS_AT_ONCE = 16;
let redis: TestRedis;
let look: Redis;

beforeAll(async () => {
  redis = await startTestRedis();
  look = redis.client();
});
afterAll(() => redis.stop());

/** Every command's id has the same length, so that recording each sends as many bytes. */
const idOf = (run: string) => run.padStart(10, "_");

const request = (id: string): CommandRequest => ({
  id,
  command: "imagic",
  userId: "ann",
  conversation: { channel: "c1" },
  options: { prompt: "a photo of a cat", seeds: "5,6" },
  attachments: [
    { option: "image", filename: "photo.png", contentType: "image/png", size: 1, url: "memory://photo" },
  ],
});

/** A bot's connection to Redis that the test cuts once the bot has sent `cutAfter` bytes. */
interface CuttableConnection {
  redis: Redis;
  /** From now on, forward `bytes` more bytes of what the bot sends, then cut (Infinity: never). */
  cutAfter(bytes: number): void;
  /** Bytes forwarded since `cutAfter`. */
  sent(): number;
  /** Redis closed its side of the cut connection: it has run everything it was sent. */
  gone: Promise<unknown>;
}

async function cuttableConnection(): Promise<CuttableConnection> {
  const { hostname, port } = new URL(redis.url);
  let budget = Number.POSITIVE_INFINITY;
  let sent = 0;
  let gone: Promise<unknown> = Promise.resolve();
  const server = createServer((bot: Socket) => {
    server.close();
    const upstream = connect(Number(port), hostname);
    gone = once(upstream, "close");
    for (const socket of [bot, upstream]) socket.on("error", () => {}); // the cut resets them
    upstream.on("data", (chunk: Buffer) => bot.write(chunk));
    upstream.on("close", () => bot.destroy());
    bot.on("close", () => upstream.end());
    bot.on("data", (chunk: Buffer) => {
      const forwarded = chunk.subarray(0, budget - sent);
      upstream.write(forwarded);
      sent += forwarded.length;
      // The bot dies: nothing more of it reaches Redis, and nothing Redis answers reaches it. Redis
      // reads what it was sent up to the end of stream, then closes (`gone`).
      if (sent === budget) {
        bot.destroy();
        upstream.end();
      }
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("the proxy has no TCP port");
  // No reconnection: a reconnected client would send the rest, which a dead process cannot.
  const client = new Redis(address.port, "127.0.0.1", { retryStrategy: () => null, maxRetriesPerRequest: 0 });
  client.on("error", () => {});
  await once(client, "ready");
  return {
    redis: client,
    cutAfter(bytes) {
      budget = bytes;
      sent = 0;
    },
    sent: () => sent,
    get gone() {
      return gone;
    },
  };
}

/** What Redis holds of command `id`: its record, its claim (pending, with a lease), both or neither. */
async function kept(id: string): Promise<"both" | "neither" | "record only" | "claim only"> {
  const record = (await look.exists(`pe:chat:command:${PLATFORM}:${id}`)) === 1;
  const claim =
    (await look.get(`pe:chat:command-claim:${PLATFORM}:${id}`))?.startsWith("pending:") === true &&
    (await look.zscore(`pe:chat:commands-pending:${PLATFORM}`, id)) !== null;
  return record && claim ? "both" : record ? "record only" : claim ? "claim only" : "neither";
}

/** Records a command on a connection cut after `bytes`; what Redis kept of it. */
async function cutAfter(bytes: number): ReturnType<typeof kept> {
  const id = idOf(`cut-${bytes}`);
  const connection = await cuttableConnection();
  connection.cutAfter(bytes);
  // The bot never hears back: whether `open` fails or hangs does not matter, only what Redis kept.
  void new PendingCommands(connection.redis, PLATFORM, LEASE_MS).open(request(id)).catch(() => {});
  await connection.gone;
  connection.redis.disconnect();
  return kept(id);
}

describe("recording an acknowledged command", () => {
  it("leaves its record and its claim both or neither, wherever the bot's connection is cut", async () => {
    // How many bytes recording one command sends, on a connection that is not cut.
    const whole = await cuttableConnection();
    whole.cutAfter(Number.POSITIVE_INFINITY);
    await new PendingCommands(whole.redis, PLATFORM, LEASE_MS).open(request(idOf("whole")));
    const total = whole.sent();
    whole.redis.disconnect();
    expect(await kept(idOf("whole"))).toBe("both");

    const outcomes = new Map<number, string>();
    // Sixteen cuts at a time, each on its own connection and command: one by one takes twice as long.
    for (let from = 0; from <= total; from += CUTS_AT_ONCE) {
      const cuts = Array.from({ length: Math.min(CUTS_AT_ONCE, total + 1 - from) }, (_, i) => from + i);
      for (const [bytes, outcome] of await Promise.all(
        cuts.map(async (b) => [b, await cutAfter(b)] as const),
      ))
        outcomes.set(bytes, outcome);
    }
    const torn = [...outcomes].filter(([, outcome]) => outcome !== "both" && outcome !== "neither");
    expect(
      torn.slice(0, 3).map(([bytes, outcome]) => `${bytes}: ${outcome}`),
      `the first of ${torn.length} cuts (of ${total + 1}) that left half a command`,
    ).toEqual([]);
    // The cuts reach both ends: nothing sent keeps nothing, everything sent keeps both.
    expect(outcomes.get(0)).toBe("neither");
    expect(outcomes.get(total)).toBe("both");
  });
});
