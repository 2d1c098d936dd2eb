/**
 * HTTP to a Hugging Face hub: the token, proxies, a stall timeout, cancellation, and the hub's answers
 * turned into messages that say what is wrong.
 *
 * Node's built-in fetch ignores HTTPS_PROXY/HTTP_PROXY/NO_PROXY, so requests go through undici's own
 * fetch with its EnvHttpProxyAgent: the proxies given (from the config) or else those of the
 * environment (`https_proxy` before `HTTPS_PROXY`, as curl), tunnelled with CONNECT, with NO_PROXY's
 * hosts (`.example.com`, `host:port`, `*`) reached directly. Redirects to the CDN go through it too.
 *
 * The hub says why it refuses in `X-Error-Code` (RepoNotFound, GatedRepo, RevisionNotFound,
 * EntryNotFound) and `X-Error-Message` (e.g. "Invalid credentials in Authorization header"); as
 * huggingface_hub does, a 401 without a code counts as "not found": the hub answers 401 to anonymous
 * requests for a repository that does not exist, exactly as for a private one.
 */
import { EnvHttpProxyAgent, fetch, type Response } from "undici";
import { UserFacingError } from "../../errors.js";

/**
 * Why the hub could not be used. `network`: unreachable, 5xx/429, a stalled or corrupted transfer
 * (retried, then the cache is used); `refused`: the hub answered 4xx (the cache is used); `repo`: the
 * repository's content cannot be used (never papered over with the cache); `interrupted`: the process is
 * stopping.
 */
export type HubErrorKind = "network" | "refused" | "repo" | "interrupted";

/** A hub failure (not found, no access, unreachable, unusable content), with a message for the operator. */
export class HubError extends UserFacingError {
  override readonly name = "HubError";
  constructor(
    message: string,
    readonly kind: HubErrorKind,
  ) {
    super(message);
  }
}

export interface ProxySettings {
  /** Proxy for https:// URLs (HTTPS_PROXY); unset: `https_proxy`/`HTTPS_PROXY` of the environment, else httpProxy. */
  httpsProxy?: string;
  /** Proxy for http:// URLs (HTTP_PROXY); unset: `http_proxy`/`HTTP_PROXY` of the environment. */
  httpProxy?: string;
  /** Hosts reached without a proxy (NO_PROXY), comma-separated; unset: `no_proxy`/`NO_PROXY`. */
  noProxy?: string;
}

export interface HubHttpOptions {
  /** The repository, for messages. */
  id: string;
  endpoint: string;
  revision: string;
  /** The settings that named the repository and the revision, for messages: MODEL and MODEL_REVISION unless said. */
  namedBy?: { id: string; revision: string };
  token?: string;
  proxy?: ProxySettings;
  signal?: AbortSignal;
}

export interface Answer {
  res: Response;
  /** Restarts the stall timer (call on every chunk received). */
  alive: () => void;
  /** Stops the stall timer. */
  done: () => void;
}

const INVALID_TOKEN = "Invalid credentials in Authorization header";

export class HubHttp {
  private readonly agent: EnvHttpProxyAgent;

  constructor(private readonly o: HubHttpOptions) {
    this.agent = new EnvHttpProxyAgent(o.proxy);
  }

  /** GET with the token; a timer aborts it when no data comes for `stallMs` (restarted by `alive()`). */
  async get(url: string, headers: Record<string, string>, stallMs: number): Promise<Answer> {
    this.throwIfInterrupted();
    const stall = new AbortController();
    const arm = () => setTimeout(() => stall.abort(new Error(`no data for ${stallMs / 1000} s`)), stallMs);
    let timer = arm();
    const alive = () => {
      clearTimeout(timer);
      timer = arm();
    };
    const done = () => clearTimeout(timer);
    try {
      const res = await fetch(url, {
        headers: { ...(this.o.token ? { authorization: `Bearer ${this.o.token}` } : {}), ...headers },
        signal: this.o.signal ? AbortSignal.any([this.o.signal, stall.signal]) : stall.signal,
        redirect: "follow",
        dispatcher: this.agent,
      });
      return { res, alive, done };
    } catch (err) {
      done();
      throw this.transferError(url, err);
    }
  }

  /** A failed request or body read as a HubError: interrupted when we are stopping, else a network failure. */
  transferError(url: string, err: unknown): HubError {
    this.throwIfInterrupted();
    if (err instanceof HubError) return err;
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const reason = cause?.code ?? cause?.message ?? (err as Error).message;
    return new HubError(
      `cannot reach ${new URL(url).origin} for ${this.o.id} (${reason}); check HF_ENDPOINT, the network and the proxy settings (HTTPS_PROXY, NO_PROXY)`,
      "network",
    );
  }

  throwIfInterrupted(): void {
    if (this.o.signal?.aborted) {
      throw new HubError(
        `downloading ${this.o.id} was interrupted: the process is stopping (the next start resumes it)`,
        "interrupted",
      );
    }
  }

  /** The hub's refusal of `file` as a message that names the cause and the setting to change. */
  refusal(res: Response, file: string): HubError {
    const { id, endpoint, revision, token } = this.o;
    const namedBy = this.o.namedBy ?? { id: "MODEL", revision: "MODEL_REVISION" };
    const status = res.status;
    const code = res.headers.get("x-error-code") ?? undefined;
    const said = res.headers.get("x-error-message") ?? undefined;
    const http = `HTTP ${status}${code ? `, ${code}` : ""}`;
    const server = said ? `: ${said}` : "";
    if (status === 401 && said === INVALID_TOKEN) {
      return new HubError(
        `the hub refused HF_TOKEN (HTTP 401: ${said}): it is mistyped, expired or revoked; create a new one at ${endpoint}/settings/tokens`,
        "refused",
      );
    }
    if (code === "GatedRepo") {
      return new HubError(
        token
          ? `${id} is gated and the account of HF_TOKEN has no access to it (${http}): request access at ${endpoint}/${id} with that account (some authors approve requests by hand)`
          : `${id} is gated (${http}): request access at ${endpoint}/${id}, then set HF_TOKEN to an access token of that account`,
        "refused",
      );
    }
    if (code === "RevisionNotFound") {
      return new HubError(
        `${id} has no revision "${revision}" (${http}${server}): check ${namedBy.revision} (a branch, tag or full commit sha)`,
        "refused",
      );
    }
    if (code === "EntryNotFound") {
      return new HubError(`${id} has no ${file} at revision ${revision} (${http})`, "refused");
    }
    if (code === "RepoNotFound" || status === 401) {
      return new HubError(
        token
          ? `${id} was not found on ${endpoint} (${http}), or the account of HF_TOKEN cannot see it: check ${namedBy.id} for a typo`
          : `${id} was not found on ${endpoint} (${http}): check ${namedBy.id} for a typo; if it is private, set HF_TOKEN to a token of an account that can read it`,
        "refused",
      );
    }
    if (status === 403) {
      return new HubError(
        `the hub refused ${id}/${file} (${http}${server}): check that HF_TOKEN may read this repository (a fine-grained token needs it listed)`,
        "refused",
      );
    }
    return new HubError(
      `${endpoint} answered ${http} for ${id}/${file}${server}`,
      status >= 500 || status === 429 ? "network" : "refused",
    );
  }

  close(): Promise<void> {
    // destroy, not close: nothing is in flight any more, and close() would wait on a stalled body.
    return this.agent.destroy();
  }
}
