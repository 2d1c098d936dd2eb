/**
 * A local stand-in for huggingface.co that answers as the real hub does, unkind parts included:
 *
 * - the revision API (`/api/models/{id}/revision/{rev}?blobs=true`) with the commit sha and each file's
 *   git blob id, size and (for LFS files) sha256; a new commit sha whenever the files change; tags,
 *   and old commits reachable by their sha;
 * - `resolve` URLs: small files served from the hub, LFS files redirected (302) to a CDN on another
 *   origin that takes no token, both with Range (`bytes=N-` and `bytes=N-M`); the CDN can ignore Range once (answering 200 with the
 *   whole file, as a cold CDN edge does);
 * - refusals with the hub's headers: `X-Error-Code` (RepoNotFound, GatedRepo, RevisionNotFound,
 *   EntryNotFound) and `X-Error-Message`: an unknown or private repository is 401 without a token and
 *   404 with one; a token the hub does not know is 401 "Invalid credentials in Authorization header"
 *   whatever the repository; a gated repository lists its files to anyone but serves them only to an
 *   account granted access (401 without a token, 403 with another account's);
 * - faults: a connection cut after N bytes (once), a response that stalls after N bytes, a wrong sha256
 *   in the listing, a listing without git blob ids, the whole hub answering one status (503).
 */
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** A token of an account that was granted every gated repository. */
export const TOKEN = "hf_test_secret_token";
/** A valid token of another account, without access to gated repositories. */
export const OTHER_TOKEN = "hf_other_account_token";
const ACCOUNTS = new Set([TOKEN, OTHER_TOKEN]);

export interface FakeRepo {
  /** Commits, oldest first; `main` is the last one. */
  commits: Array<{ sha: string; files: Map<string, Buffer> }>;
  tags: Map<string, string>;
  gated: boolean;
  private: boolean;
}

export interface LoggedRequest {
  server: "hub" | "cdn";
  path: string;
  /** The repository file asked for (resolve and CDN requests). */
  file?: string;
  range?: string;
  auth?: string;
  status: number;
}

export function isLfs(file: string): boolean {
  return /\.(safetensors|bin|ckpt|pt|pth|onnx)$/.test(file);
}

export function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** git's blob id of a file: the hub's etag for files kept in git. */
export function gitBlobId(data: Buffer): string {
  return createHash("sha1").update(`blob ${data.length}\0`).update(data).digest("hex");
}

export class FakeHub {
  readonly repos = new Map<string, FakeRepo>();
  readonly log: LoggedRequest[] = [];
  /** Files whose next download is cut off after this many bytes (once). */
  readonly dropAfter = new Map<string, number>();
  /** Files whose downloads send this many bytes and then nothing more, keeping the connection open. */
  readonly stallAfter = new Map<string, number>();
  /** Files whose listed sha256 is wrong. */
  readonly badHash = new Set<string>();
  /** Every hub request (not the CDN) is answered with this status, e.g. 503. */
  down: number | undefined;
  /** The CDN answers the next Range request with 200 and the whole file. */
  cdnIgnoresRangeOnce = false;
  /** The listing leaves out git blob ids, as some mirrors do. */
  omitBlobIds = false;
  url = "";
  cdnUrl = "";
  private readonly blobs = new Map<string, Buffer>();
  private readonly servers: Server[] = [];

  async start(): Promise<void> {
    this.url = await this.listen((req, res) => this.hub(req, res));
    this.cdnUrl = await this.listen((req, res) => this.cdn(req, res));
  }

  async stop(): Promise<void> {
    for (const server of this.servers) {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  }

  /** Publishes `files` as the new head of main (a new commit when they differ); returns its sha. */
  publish(
    id: string,
    files: Map<string, Buffer>,
    access: { gated?: boolean; private?: boolean } = {},
  ): string {
    const repo: FakeRepo = this.repos.get(id) ?? {
      commits: [],
      tags: new Map(),
      gated: false,
      private: false,
    };
    repo.gated = access.gated ?? repo.gated;
    repo.private = access.private ?? repo.private;
    const listing = [...files].map(([name, data]) => [name, sha256(data)]).sort();
    const sha = createHash("sha1")
      .update(JSON.stringify([id, listing]))
      .digest("hex");
    if (repo.commits.at(-1)?.sha !== sha) repo.commits.push({ sha, files: new Map(files) });
    for (const data of files.values()) this.blobs.set(sha256(data), data);
    this.repos.set(id, repo);
    return sha;
  }

  /** The files of the head of main. */
  files(id: string): Map<string, Buffer> {
    return new Map(this.repos.get(id)?.commits.at(-1)?.files);
  }

  /** Resolve requests that reached the hub for `id`, as repository file names. */
  downloads(id?: string): string[] {
    return this.log
      .filter((r) => r.server === "hub" && r.file !== undefined && (!id || r.path.startsWith(`/${id}/`)))
      .map((r) => r.file as string);
  }

  private async listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
    const server = createServer(handler);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    this.servers.push(server);
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  private record(
    server: "hub" | "cdn",
    req: IncomingMessage,
    url: URL,
    file: string | undefined,
  ): LoggedRequest {
    const entry = {
      server,
      path: url.pathname,
      file,
      range: req.headers.range,
      auth: req.headers.authorization,
      status: 0,
    };
    this.log.push(entry);
    return entry;
  }

  private hub(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", this.url);
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const file = resolve ? decodeURIComponent(resolve[3] ?? "") : undefined;
    const entry = this.record("hub", req, url, file);
    const refuse = (status: number, code: string | undefined, message: string) => {
      entry.status = status;
      res.writeHead(status, { ...(code ? { "x-error-code": code } : {}), "x-error-message": message });
      res.end(JSON.stringify({ error: message }));
    };
    if (this.down) return void refuse(this.down, undefined, "Service Unavailable");
    const match = api ?? resolve;
    if (!match) return void refuse(404, undefined, "Not found");
    const id = match[1] ?? "";
    const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
    if (token !== undefined && !ACCOUNTS.has(token)) {
      return void refuse(401, undefined, "Invalid credentials in Authorization header");
    }
    const repo = this.repos.get(id);
    if (!repo || (repo.private && token !== TOKEN)) {
      return void refuse(token ? 404 : 401, "RepoNotFound", "Repository not found");
    }
    const revision = decodeURIComponent(match[2] ?? "");
    const sha =
      revision === "main"
        ? repo.commits.at(-1)?.sha
        : (repo.tags.get(revision) ?? repo.commits.find((c) => c.sha === revision)?.sha);
    const commit = repo.commits.find((c) => c.sha === sha);
    if (!commit) return void refuse(404, "RevisionNotFound", `Invalid rev id: ${revision}`);

    if (api) {
      entry.status = 200;
      const siblings = [...commit.files].map(([rfilename, data]) => ({
        rfilename,
        ...(this.omitBlobIds ? {} : { blobId: gitBlobId(data) }),
        size: data.length,
        ...(isLfs(rfilename)
          ? {
              lfs: {
                sha256: this.badHash.has(rfilename) ? "0".repeat(64) : sha256(data),
                size: data.length,
                pointerSize: 134,
              },
            }
          : {}),
      }));
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ id, sha: commit.sha, gated: repo.gated ? "manual" : false, siblings }));
      return;
    }
    if (repo.gated && token !== TOKEN) {
      return void (token
        ? refuse(
            403,
            "GatedRepo",
            `Access to model ${id} is restricted and you are not in the authorized list. Visit https://huggingface.co/${id} to ask for access.`,
          )
        : refuse(
            401,
            "GatedRepo",
            `Access to model ${id} is restricted. You must have access to it and be authenticated to access it. Please log in.`,
          ));
    }
    const data = commit.files.get(file ?? "");
    if (!file || !data) return void refuse(404, "EntryNotFound", "Entry not found");
    const headers = { "x-repo-commit": commit.sha };
    if (isLfs(file)) {
      entry.status = 302;
      const location = `${this.cdnUrl}/repos/${sha256(data)}?name=${encodeURIComponent(file)}`;
      res.writeHead(302, {
        ...headers,
        location,
        "x-linked-etag": `"${sha256(data)}"`,
        "x-linked-size": data.length,
      });
      res.end();
      return;
    }
    this.send(req, res, entry, data, file, { ...headers, etag: `"${gitBlobId(data)}"` });
  }

  private cdn(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", this.cdnUrl);
    const file = url.searchParams.get("name") ?? undefined;
    const entry = this.record("cdn", req, url, file);
    const data = this.blobs.get(/^\/repos\/([0-9a-f]{64})$/.exec(url.pathname)?.[1] ?? "");
    if (!data || !file) {
      entry.status = 404;
      return void res.writeHead(404).end();
    }
    if (req.headers.range && this.cdnIgnoresRangeOnce) {
      this.cdnIgnoresRangeOnce = false;
      this.send({ headers: {} } as IncomingMessage, res, entry, data, file, {});
      return;
    }
    this.send(req, res, entry, data, file, {});
  }

  /** The bytes from the requested Range on, misbehaving as the faults say. */
  private send(
    req: IncomingMessage,
    res: ServerResponse,
    entry: LoggedRequest,
    data: Buffer,
    file: string,
    headers: Record<string, string>,
  ): void {
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    const start = Number(range?.[1] ?? 0);
    const end = range?.[2] ? Math.min(Number(range[2]) + 1, data.length) : data.length;
    if (start >= data.length && start > 0) {
      entry.status = 416;
      return void res.writeHead(416, { "content-range": `bytes */${data.length}` }).end();
    }
    const body = data.subarray(start, end);
    const partial = start > 0 || end < data.length;
    entry.status = partial ? 206 : 200;
    res.writeHead(entry.status, {
      ...headers,
      "content-length": body.length,
      ...(partial ? { "content-range": `bytes ${start}-${end - 1}/${data.length}` } : {}),
    });
    const drop = this.dropAfter.get(file);
    if (drop !== undefined) {
      this.dropAfter.delete(file);
      res.write(body.subarray(0, drop), () => res.destroy());
      return;
    }
    const stall = this.stallAfter.get(file);
    if (stall !== undefined) {
      res.write(body.subarray(0, stall)); // and nothing more: the connection stays open
      return;
    }
    res.end(body);
  }
}
