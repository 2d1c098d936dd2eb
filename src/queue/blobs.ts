// Content-addressed blobs in Redis: input photos, Imagic states, learned concepts, results, previews.
// Jobs carry blob ids, so any engine host can run any job; every blob expires (BLOB_TTL_SECONDS).
import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import { formatSeconds } from "../engine/progress.js";
import { UserFacingError } from "../errors.js";
import { keys } from "./keys.js";

export type BlobKind = "image" | "state" | "concept" | "result" | "preview";

export interface BlobLimits {
  ttlSeconds: number;
  /** Largest single blob. */
  maxBytes: number;
  /** Most bytes of live blobs one user may hold (uploads only; engine outputs are not counted). */
  userQuotaBytes: number;
}

export interface PutOptions {
  userId: string;
  kind: BlobKind;
  /** How the user knows the blob ("photo.jpg", "reference 2"), for messages. Default: the kind. */
  label?: string;
  /** Count against the user's quota. Default true; the engine writes its outputs with false. */
  quota?: boolean;
  /** A shorter life than the store's (previews, worthless once shown); never a longer one. */
  ttlSeconds?: number;
}

// Atomic put: quota check (dropping expired entries), then store or refresh. Storing bytes that are
// already there only extends their TTL, and a re-upload does not count twice against the quota. A
// refusal returns { bytes used, when enough of them expire for this blob to fit (ms) }.
const PUT = `
local blobKey, quotaKey = KEYS[1], KEYS[2]
local id, size, ttl, now, quota = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if quota > 0 then
  redis.call("ZREMRANGEBYSCORE", quotaKey, "-inf", now)
  local entries = {}
  local used = 0
  local live = redis.call("ZRANGE", quotaKey, 0, -1, "WITHSCORES")
  for i = 1, #live, 2 do
    local mid, msize = string.match(live[i], "^(%x+):(%d+)$")
    if mid ~= id then
      used = used + tonumber(msize)
      table.insert(entries, { tonumber(msize), tonumber(live[i + 1]) })
    end
  end
  if used + size > quota then
    -- Entries come oldest expiry first: room is made once enough of them have expired.
    local left = used
    for _, entry in ipairs(entries) do
      left = left - entry[1]
      if left + size <= quota then return { used, entry[2] } end
    end
    return { used, now + ttl }
  end
  redis.call("ZADD", quotaKey, now + ttl, id .. ":" .. size)
  redis.call("PEXPIRE", quotaKey, ttl)
end
if redis.call("EXISTS", blobKey) == 0 then
  redis.call("HSET", blobKey, "data", ARGV[6], "kind", ARGV[7], "size", size, "user", ARGV[8])
end
redis.call("PEXPIRE", blobKey, ttl, "GT")
if redis.call("PTTL", blobKey) < ttl then redis.call("PEXPIRE", blobKey, ttl) end
return -1
`;

function blobIdOf(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}

function formatDuration(seconds: number): string {
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

export class BlobStore {
  constructor(
    private readonly redis: Redis,
    readonly limits: BlobLimits,
  ) {}

  /** Stores bytes and returns their id (sha256). Throws UserFacingError over the blob or quota limit. */
  async put(bytes: Uint8Array, options: PutOptions): Promise<string> {
    const label = options.label ?? options.kind;
    if (bytes.byteLength > this.limits.maxBytes) {
      throw new UserFacingError(
        `${label} is ${formatBytes(bytes.byteLength)}; the limit per file is ${formatBytes(this.limits.maxBytes)}`,
      );
    }
    const id = blobIdOf(bytes);
    const quota = options.quota === false ? 0 : this.limits.userQuotaBytes;
    const ttlSeconds = Math.min(options.ttlSeconds ?? this.limits.ttlSeconds, this.limits.ttlSeconds);
    const reply = await this.redis.eval(
      PUT,
      2,
      keys.blob(id),
      keys.blobQuota(options.userId),
      id,
      bytes.byteLength,
      ttlSeconds * 1000,
      Date.now(),
      quota,
      Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      options.kind,
      options.userId,
    );
    if (Array.isArray(reply)) {
      const [used, roomAt] = reply.map(Number) as [number, number];
      // Files count until they expire, whether or not their jobs have finished: say when room is made.
      throw new UserFacingError(
        `${label} (${formatBytes(bytes.byteLength)}) does not fit: you already have ${formatBytes(used)} of files ` +
          `stored and the limit is ${formatBytes(quota)} per user; files are kept ${formatDuration(this.limits.ttlSeconds)} ` +
          `from when they were sent, even once their jobs have finished, so there is room for it in ` +
          `${formatSeconds((roomAt - Date.now()) / 1000)}`,
      );
    }
    return id;
  }

  /** The blob's bytes, or undefined when it does not exist (never stored, or expired). */
  async get(id: string): Promise<Buffer | undefined> {
    return (await this.redis.hgetBuffer(keys.blob(id), "data")) ?? undefined;
  }

  /** The blob's bytes; a blob that expired is a UserFacingError naming `label`. */
  async require(id: string, label: string): Promise<Buffer> {
    const bytes = await this.get(id);
    if (!bytes) throw this.expired(label);
    return bytes;
  }

  /**
   * Makes the blobs live at least `ttlSeconds` more (never shortens a TTL) and returns the ids that
   * do not exist. Called at enqueue so that inputs outlive the wait in the queue.
   */
  async touch(ids: readonly string[], ttlSeconds = this.limits.ttlSeconds): Promise<string[]> {
    const ttl = ttlSeconds * 1000;
    const pipeline = this.redis.pipeline();
    for (const id of ids) {
      pipeline.exists(keys.blob(id));
      pipeline.pexpire(keys.blob(id), ttl, "GT");
    }
    const replies = (await pipeline.exec()) ?? [];
    const missing: string[] = [];
    ids.forEach((id, i) => {
      const [err, exists] = replies[2 * i] ?? [null, 0];
      if (err) throw err;
      if (exists === 0) missing.push(id);
    });
    return missing;
  }

  /** Bytes of live uploads counted against the user's quota. */
  async usage(userId: string): Promise<number> {
    const members = await this.redis.zrangebyscore(keys.blobQuota(userId), Date.now(), "+inf");
    return members.reduce((sum, m) => sum + Number(m.slice(m.indexOf(":") + 1)), 0);
  }

  expired(label: string): UserFacingError {
    return new UserFacingError(
      `${label} is no longer stored (files are kept ${formatDuration(this.limits.ttlSeconds)}); please send it again`,
    );
  }
}
