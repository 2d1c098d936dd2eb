/**
 * Per-bucket rate limits as Discord applies them: a fixed window per route and major parameter
 * (channel, webhook), advertised on every response through X-RateLimit-* headers, and a 429 with
 * Retry-After when a client sends past the limit anyway.
 */
export interface BucketLimit {
  limit: number;
  windowMs: number;
}

interface Window {
  startedAt: number;
  used: number;
}

export interface RateDecision {
  allowed: boolean;
  headers: Record<string, string>;
  retryAfterSeconds: number;
}

export class RateLimiter {
  private readonly windows = new Map<string, Window>();

  decide(bucket: string, limit: BucketLimit, now = Date.now()): RateDecision {
    let window = this.windows.get(bucket);
    if (!window || now - window.startedAt >= limit.windowMs) {
      window = { startedAt: now, used: 0 };
      this.windows.set(bucket, window);
    }
    const resetAfterMs = window.startedAt + limit.windowMs - now;
    const allowed = window.used < limit.limit;
    if (allowed) window.used += 1;
    const headers: Record<string, string> = {
      "x-ratelimit-limit": String(limit.limit),
      "x-ratelimit-remaining": String(Math.max(0, limit.limit - window.used)),
      "x-ratelimit-reset": ((now + resetAfterMs) / 1000).toFixed(3),
      "x-ratelimit-reset-after": (resetAfterMs / 1000).toFixed(3),
      "x-ratelimit-bucket": Buffer.from(bucket.split(":")[0] ?? bucket)
        .toString("hex")
        .slice(0, 16),
    };
    if (!allowed) {
      headers["retry-after"] = String(Math.ceil(resetAfterMs / 1000));
      headers["x-ratelimit-scope"] = "user";
    }
    return { allowed, headers, retryAfterSeconds: resetAfterMs / 1000 };
  }
}
