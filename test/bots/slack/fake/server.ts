import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { WebSocketServer } from "ws";
import { type BucketLimit, RateLimiter } from "../../../../src/bots/discord/fake/rate-limits.js";
import { Deliveries, type Delivery, type SignedRequest } from "./delivery.js";

/**
 * A protocol-level fake of Slack on loopback, for @slack/bolt and @slack/web-api to talk to unmodified
 * (the WebClient's slackApiUrl → apiUrl). It serves the Web API methods the bot calls with Slack's
 * response shapes ({ ok: false, error } with HTTP 200, missing_scope with needed/provided), rate limits
 * per method (429 + Retry-After), private file URLs that need the bot token (a sign-in page otherwise),
 * the external upload flow, and delivers slash commands, form submissions, shortcuts and events over Socket
 * Mode (apps.connections.open → a WebSocket of envelopes to acknowledge) or as signed HTTP requests. It
 * keeps Slack's 3-second windows, stores message metadata (returned by conversations.replies and
 * .history with include_all_metadata, which needs the history scope of the channel's kind) and records what the bot did
 * for tests to assert on. A test can stall a Web API call (carried out or not, never answered): what a bot
 * that dies mid-call leaves.
 */

export interface FakeUser {
  id: string;
  name: string;
}

export interface FakeChannel {
  id: string;
  name: string;
  kind: "public" | "private" | "im";
  members: Set<string>;
  /** Posting permissions let only some members post (an announcement channel); a bot is never one. */
  restricted?: boolean;
}

export interface FakeFile {
  id: string;
  name: string;
  title: string;
  /** What files.info declares (a test may make it lie). */
  mimetype: string;
  size: number;
  bytes: Uint8Array;
  owner: string;
  /** Channels the file was shared in (a message holds it). */
  channels: Set<string>;
  /** A file of another service shown on Slack (Google Drive…): only a link, its URL the service's. */
  external?: { type: string; url?: string };
  /** Uploaded through one of the app's forms: the app may read it wherever it is. */
  viaForm: boolean;
  /** External upload: the bytes arrived, and files.completeUploadExternal finished it. */
  uploaded: boolean;
  completed: boolean;
  deleted: boolean;
}

export interface FakeMessage {
  channel: string;
  ts: string;
  threadTs?: string;
  user: string;
  text: string;
  /** File ids, in order. */
  files: string[];
  reactions: Map<string, Set<string>>;
  /** Every text/file state the message went through, creation first. */
  history: Array<{ at: number; text: string; files: string[] }>;
  /** Message metadata, as chat.postMessage or chat.update set it. */
  metadata?: { event_type: string; event_payload: Record<string, unknown> };
}

/** A Web API call a test asked the fake to leave unanswered (see FakeSlack.stall). */
/** Which Web API calls a test singles out: by method and arguments. */
export type SlackCallMatch = (call: { method: string; args: Record<string, unknown> }) => boolean;

export interface SlackStallRule {
  /** Whether Slack carries the call out before it goes silent, or never sees it. */
  when: "before" | "after";
  match: SlackCallMatch;
}

export interface FakeEphemeral {
  channel: string;
  user: string;
  text: string;
  at: number;
  /** chat.postEphemeral, a slash command's acknowledgement, or its response_url. */
  via: "api" | "ack" | "response_url";
}

export interface FakeView {
  id: string;
  /** The trigger the app opened it with. */
  trigger: string;
  user: string;
  /** The view as the app opened it (JSON). */
  view: {
    type: string;
    callback_id?: string;
    private_metadata?: string;
    title: { text: string };
    submit?: { text: string };
    blocks: Array<Record<string, unknown>>;
  };
  hash: string;
  open: boolean;
  /** The last inline errors the app answered a submission with. */
  errors?: Record<string, string>;
}

export interface RecordedCall {
  at: number;
  method: string;
  status: number;
  /** Slack's error code for { ok: false }. */
  error?: string;
  args: Record<string, unknown>;
}

/** What a user types in a form, by block id: text, a select's value, or files. */
export type FormValues = Record<string, string | FakeFile[] | undefined>;

export interface FakeSlackOptions {
  /** The bot token's scopes (default: everything the bot needs). */
  scopes?: string[];
  /** Per Web API method (or "chat.postMessage" per channel). Defaults follow Slack's tiers. */
  limits?: Record<string, BucketLimit>;
  /** Slack's acknowledgement window (3 s) and trigger lifetime. */
  windowMs?: number;
  /** How long a response_url is taken (Slack: 30 minutes). */
  responseUrlMs?: number;
  /** Server pings on Socket Mode connections (the SDK drops a connection that is silent for 30 s). */
  pingIntervalMs?: number;
}

/** The scopes of docs/SLACK.md's manifest. */
export const BOT_SCOPES = [
  "commands",
  "chat:write",
  "channels:history",
  "groups:history",
  "im:history",
  "mpim:history",
  "reactions:read",
  "reactions:write",
  "files:read",
  "files:write",
];

const TIER = {
  2: { limit: 20, windowMs: 60_000 },
  3: { limit: 50, windowMs: 60_000 },
  4: { limit: 100, windowMs: 60_000 },
};

/** Slack's rate tiers of the methods the bot calls; chat.postMessage is about one a second per channel. */
const DEFAULT_LIMITS: Record<string, BucketLimit> = {
  "auth.test": TIER[4],
  "apps.connections.open": TIER[2],
  "views.open": TIER[4],
  "chat.postMessage": { limit: 5, windowMs: 5000 },
  "chat.update": TIER[3],
  "chat.postEphemeral": TIER[4],
  "reactions.add": TIER[3],
  "files.info": TIER[4],
  "files.getUploadURLExternal": TIER[4],
  "files.completeUploadExternal": TIER[4],
  "files.delete": TIER[3],
  "conversations.replies": TIER[3],
  "conversations.history": TIER[3],
};

/** The scope conversations.replies and .history need, by the kind of channel they read. */
const HISTORY_SCOPES: Record<FakeChannel["kind"], string> = {
  public: "channels:history",
  private: "groups:history",
  im: "im:history",
};

/** Scopes each method needs (missing_scope otherwise). */
const NEEDS: Record<string, string> = {
  "chat.postMessage": "chat:write",
  "chat.update": "chat:write",
  "chat.postEphemeral": "chat:write",
  "reactions.add": "reactions:write",
  "files.info": "files:read",
  "files.getUploadURLExternal": "files:write",
  "files.completeUploadExternal": "files:write",
  "files.delete": "files:write",
};

/** Emoji names reactions.add knows (a small part of Slack's list, enough for the bot and the tests). */
const EMOJI = new Set([
  "one",
  "two",
  "three",
  "four",
  "five",
  "six",
  "seven",
  "eight",
  "nine",
  "keycap_ten",
  "+1",
  "heart",
  "eyes",
]);

class SlackApiError extends Error {
  constructor(
    readonly code: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(code);
  }
}

const fail = (code: string, extra?: Record<string, unknown>) => new SlackApiError(code, extra);

let counter = 0;
const id = (prefix: string) => `${prefix}${(++counter).toString(36).toUpperCase().padStart(8, "0")}`;

/** Sniffs what Slack would: the type of the bytes, else the extension. */
function sniff(name: string, bytes: Uint8Array): string {
  const head = Buffer.from(bytes.subarray(0, 12));
  if (head.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])))
    return "image/png";
  if (head[0] === 0xff && head[1] === 0xd8) return "image/jpeg";
  if (head.subarray(0, 3).toString() === "GIF") return "image/gif";
  if (head.subarray(8, 12).toString() === "WEBP") return "image/webp";
  const ext = name.split(".").pop()?.toLowerCase();
  return ext === "txt" ? "text/plain" : "application/octet-stream";
}

export class FakeSlack {
  readonly botToken = `xoxb-fake-${randomBytes(8).toString("hex")}`;
  readonly appToken = `xapp-fake-${randomBytes(8).toString("hex")}`;
  readonly signingSecret = randomBytes(16).toString("hex");
  readonly teamId = id("T");
  readonly appId = id("A");
  readonly botUser: FakeUser = { id: id("U"), name: "photo-bot" };
  readonly botId = id("B");
  readonly scopes: Set<string>;
  readonly channels = new Map<string, FakeChannel>();
  readonly messages = new Map<string, FakeMessage>();
  readonly files = new Map<string, FakeFile>();
  readonly views = new Map<string, FakeView>();
  readonly ephemerals: FakeEphemeral[] = [];
  readonly calls: RecordedCall[] = [];
  /** Web API calls that will be answered with a 429 first, by method (tests of the WebClient's waiting). */
  readonly forcedLimits = new Map<string, number>();
  /** The next call of a method is answered { ok: false } with this code (Slack's internal_error, fatal_error…). */
  readonly forcedErrors = new Map<string, string>();
  readonly deliveries: Deliveries;
  private readonly triggers = new Map<string, { user: string; at: number; used: boolean }>();
  private readonly responseUrls = new Map<
    string,
    { user: string; channel: string; at: number; uses: number }
  >();
  private readonly limiter = new RateLimiter();
  private readonly stalls: Array<SlackStallRule & { stalled: () => void }> = [];
  /** The outages under way (see outage). */
  private readonly outages = new Set<SlackCallMatch>();
  private readonly limits: Record<string, BucketLimit>;
  private readonly windowMs: number;
  private readonly responseUrlMs: number;
  private readonly http: Server;
  private readonly wss: WebSocketServer;
  private readonly pinger: NodeJS.Timeout;
  private lastTs = 0;
  private port = 0;

  private constructor(options: FakeSlackOptions) {
    this.scopes = new Set(options.scopes ?? BOT_SCOPES);
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.windowMs = options.windowMs ?? 3000;
    this.responseUrlMs = options.responseUrlMs ?? 30 * 60_000;
    this.deliveries = new Deliveries(this.windowMs, this.appId);
    this.http = createServer((req, res) => void this.handleHttp(req, res));
    // Idle keep-alive sockets are closed by the clients only: a server closing one while a client reuses it
    // is a reset (ECONNRESET) that has nothing to do with what is tested.
    this.http.keepAliveTimeout = 0;
    this.wss = new WebSocketServer({ server: this.http, path: "/link" });
    this.wss.on("connection", (socket) => this.deliveries.attach(socket));
    this.pinger = setInterval(() => this.deliveries.ping(), options.pingIntervalMs ?? 5000);
    this.pinger.unref();
  }

  static async start(options: FakeSlackOptions = {}): Promise<FakeSlack> {
    const fake = new FakeSlack(options);
    await new Promise<void>((resolve) => fake.http.listen(0, "127.0.0.1", resolve));
    fake.port = (fake.http.address() as AddressInfo).port;
    return fake;
  }

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The Web API base URL (the WebClient's slackApiUrl, SLACK_API_URL). */
  get apiUrl(): string {
    return `${this.origin}/api/`;
  }

  /** Deliver to the app over HTTP (its request URL) instead of Socket Mode. */
  useHttp(url: string): void {
    this.deliveries.http = { url, signingSecret: this.signingSecret };
  }

  async close(): Promise<void> {
    clearInterval(this.pinger);
    this.deliveries.drop();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    this.http.closeAllConnections();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }

  // ── world building ────────────────────────────────────────────────────────────────────────────

  user(name: string): FakeUser {
    return { id: id("U"), name };
  }

  /** A channel with these members; the bot is one unless `bot: false`. */
  channel(
    name: string,
    members: FakeUser[],
    options: { bot?: boolean; kind?: "public" | "private"; restricted?: boolean } = {},
  ): FakeChannel {
    const channel: FakeChannel = {
      id: id(options.kind === "private" ? "G" : "C"),
      name,
      kind: options.kind ?? "public",
      ...(options.restricted ? { restricted: true } : {}),
      members: new Set([...members.map((m) => m.id), ...(options.bot === false ? [] : [this.botUser.id])]),
    };
    this.channels.set(channel.id, channel);
    return channel;
  }

  /** A file a user uploads (in a form's file input, or to attach to a message); `declared` makes Slack's metadata lie. */
  upload(
    user: FakeUser,
    name: string,
    bytes: Uint8Array,
    declared: { mimetype?: string; size?: number } = {},
  ): FakeFile {
    const file: FakeFile = {
      id: id("F"),
      name,
      title: name,
      mimetype: declared.mimetype ?? sniff(name, bytes),
      size: declared.size ?? bytes.byteLength,
      bytes,
      owner: user.id,
      channels: new Set(),
      viaForm: true,
      uploaded: true,
      completed: true,
      deleted: false,
    };
    this.files.set(file.id, file);
    return file;
  }

  /**
   * A user picks a file of another service (`type`: files.info's external_type, "gdrive"…): Slack keeps its
   * name, type and the service's URL (`url`, if any), never its bytes.
   */
  externalFile(user: FakeUser, name: string, mimetype: string, type: string, url?: string): FakeFile {
    const file = this.upload(user, name, new Uint8Array(), { mimetype, size: 0 });
    file.external = { type, ...(url ? { url } : {}) };
    return file;
  }

  /** A user posts a message (with files shared in the channel). */
  post(user: FakeUser, channel: FakeChannel, text: string, files: FakeFile[] = []): FakeMessage {
    for (const file of files) {
      file.viaForm = false;
      file.channels.add(channel.id);
    }
    return this.store({ channel: channel.id, user: user.id, text, files: files.map((f) => f.id) });
  }

  /**
   * A user (an admin, for the bot's messages) deletes a message: it is gone from its channel, and
   * chat.update and reactions.add on it answer message_not_found; its thread's replies stay.
   */
  deleteMessage(message: FakeMessage): void {
    this.messages.delete(`${message.channel}:${message.ts}`);
  }

  /** What deleting a file in Slack does: files.info and its URLs stop working. */
  deleteFile(file: FakeFile): void {
    file.deleted = true;
  }

  /**
   * Slack fails on its side for the calls that `match`: each is answered `service_unavailable` and not
   * carried out (the WebClient does not retry such an answer) until the function returned ends the outage.
   */
  outage(match: SlackCallMatch): () => void {
    this.outages.add(match);
    return () => this.outages.delete(match);
  }

  // ── what users do ─────────────────────────────────────────────────────────────────────────────

  /**
   * The next Web API call that `match`es is left unanswered — carried out first or not at all (`when`) —
   * as when the bot dies mid-call. Resolves once it has stalled.
   */
  stall(rule: SlackStallRule): Promise<void> {
    return new Promise((resolve) => this.stalls.push({ ...rule, stalled: resolve }));
  }

  /** A user runs a slash command: the app gets it with a trigger_id valid for 3 s. */
  command(
    user: FakeUser,
    channel: FakeChannel,
    command: string,
    text = "",
  ): { trigger: string; delivery: Delivery } {
    const trigger = this.trigger(user);
    const responseUrl = this.responseUrl(user, channel);
    const delivery = this.deliveries.deliver("slash_commands", {
      token: "verification-token",
      team_id: this.teamId,
      team_domain: "fake",
      channel_id: channel.id,
      channel_name: channel.name,
      user_id: user.id,
      user_name: user.name,
      command,
      // Slack escapes its three control characters in what the user typed (&amp; &lt; &gt;).
      text: text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"),
      api_app_id: this.appId,
      is_enterprise_install: "false",
      response_url: responseUrl,
      trigger_id: trigger,
    });
    // A slash command's acknowledgement with text is shown to its user, as an ephemeral message.
    void delivery.settled.then(() => {
      const text = (delivery.response as { text?: string } | undefined)?.text;
      if (text)
        this.ephemerals.push({ channel: channel.id, user: user.id, text, at: Date.now(), via: "ack" });
    });
    return { trigger, delivery };
  }

  /** A user runs a message shortcut on `message`. */
  shortcut(
    user: FakeUser,
    message: FakeMessage,
    callbackId: string,
  ): { trigger: string; delivery: Delivery } {
    const channel = this.mustChannel(message.channel);
    const trigger = this.trigger(user);
    const delivery = this.deliveries.deliver("interactive", {
      type: "message_action",
      token: "verification-token",
      action_ts: this.nextTs(),
      team: { id: this.teamId, domain: "fake" },
      user: { id: user.id, username: user.name, name: user.name, team_id: this.teamId },
      channel: { id: channel.id, name: channel.name },
      is_enterprise_install: false,
      enterprise: null,
      callback_id: callbackId,
      trigger_id: trigger,
      response_url: this.responseUrl(user, channel),
      message_ts: message.ts,
      message: this.messageJson(message),
    });
    return { trigger, delivery };
  }

  /** The form the app opened with a trigger (a timeout names what views.open was refused with). */
  viewFor(trigger: string): Promise<FakeView> {
    const refusals = () =>
      this.calls
        .filter((c) => c.method === "views.open" && c.args.trigger_id === trigger)
        .map((c) => c.error);
    return this.waitFor(
      () => `a form opened with ${trigger} (views.open answered: ${refusals().join(", ")})`,
      () => [...this.views.values()].find((v) => v.trigger === trigger),
    );
  }

  /**
   * A user submits a form. As Slack's client does, it refuses (throws, naming why) required inputs left
   * empty and values out of an input's bounds, unless `client: false` (a request made some other way).
   */
  submit(view: FakeView, user: FakeUser, values: FormValues, options: { client?: boolean } = {}): Delivery {
    if (!view.open) throw new Error(`form ${view.id} is not open`);
    const state: Record<string, Record<string, unknown>> = {};
    const refused: string[] = [];
    for (const block of view.view.blocks) {
      if (block.type !== "input") continue;
      const blockId = String(block.block_id);
      const element = block.element as Record<string, unknown>;
      const value = values[blockId];
      const empty = value === undefined || value === "" || (Array.isArray(value) && value.length === 0);
      if (empty && !block.optional) refused.push(`${blockId} is required`);
      const files = Array.isArray(value) ? value : [];
      const text = typeof value === "string" ? value : undefined;
      if (element.type === "file_input" && files.length > Number(element.max_files ?? 10))
        refused.push(`${blockId} takes ${element.max_files} files at most`);
      if (element.type === "plain_text_input" && text && text.length > Number(element.max_length ?? 3000))
        refused.push(`${blockId} is too long`);
      if (element.type === "number_input" && text !== undefined && text !== "") {
        const n = Number(text);
        if (
          !Number.isFinite(n) ||
          n < Number(element.min_value ?? -Infinity) ||
          n > Number(element.max_value ?? Infinity)
        )
          refused.push(`${blockId} is out of bounds`);
      }
      const action = String(element.action_id);
      state[blockId] = {
        [action]:
          element.type === "file_input"
            ? { type: "file_input", files: files.map((f) => this.fileJson(f)) }
            : element.type === "static_select"
              ? {
                  type: "static_select",
                  selected_option: text ? { text: { type: "plain_text", text }, value: text } : null,
                }
              : { type: element.type, value: text ?? null },
      };
    }
    if (options.client !== false && refused.length > 0)
      throw new Error(`Slack's client refuses the form: ${refused.join("; ")}`);
    const delivery = this.deliveries.deliver("interactive", {
      type: "view_submission",
      team: { id: this.teamId, domain: "fake" },
      user: { id: user.id, username: user.name, name: user.name, team_id: this.teamId },
      api_app_id: this.appId,
      token: "verification-token",
      trigger_id: this.trigger(user),
      view: {
        id: view.id,
        team_id: this.teamId,
        ...view.view,
        state: { values: state },
        hash: view.hash,
        root_view_id: view.id,
        previous_view_id: null,
        clear_on_close: false,
        notify_on_close: false,
        app_id: this.appId,
        bot_id: this.botId,
        external_id: "",
        app_installed_team_id: this.teamId,
      },
      response_urls: [],
      is_enterprise_install: false,
      enterprise: null,
    });
    void delivery.settled.then(() => {
      const response = delivery.response as
        | { response_action?: string; errors?: Record<string, string> }
        | undefined;
      if (delivery.ackedAt === undefined) return; // the user sees "We had some trouble connecting"
      if (response?.response_action === "errors") view.errors = response.errors;
      else view.open = false;
    });
    return delivery;
  }

  /** A user reacts to a message: stored, and reaction_added goes to the app. */
  react(user: FakeUser, message: FakeMessage, name: string): Delivery {
    const users = message.reactions.get(name) ?? new Set<string>();
    users.add(user.id);
    message.reactions.set(name, users);
    return this.event({
      type: "reaction_added",
      user: user.id,
      reaction: name,
      item: { type: "message", channel: message.channel, ts: message.ts },
      item_user: message.user,
      event_ts: this.nextTs(),
    });
  }

  private event(event: Record<string, unknown>): Delivery {
    return this.deliveries.deliver("events_api", {
      token: "verification-token",
      team_id: this.teamId,
      api_app_id: this.appId,
      event,
      type: "event_callback",
      event_id: id("Ev"),
      event_time: Math.floor(Date.now() / 1000),
      authorizations: [
        {
          enterprise_id: null,
          team_id: this.teamId,
          user_id: this.botUser.id,
          is_bot: true,
          is_enterprise_install: false,
        },
      ],
      is_ext_shared_channel: false,
    });
  }

  /** Slack's retry of a delivery (same payload and event_id, retry number one higher). */
  redeliver(delivery: Delivery): Delivery {
    return this.deliveries.redeliver(delivery);
  }

  /** A raw signed (or forged) POST to the app's request URL. */
  postToApp(request: SignedRequest): Promise<{ status: number; text: string }> {
    return this.deliveries.post(request);
  }

  // ── HTTP: Web API, files, uploads, response URLs ──────────────────────────────────────────────

  private async handleHttp(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", this.origin);
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const [, area, ...rest] = url.pathname.split("/");
    if (area === "api") return this.webApi(rest.join("/"), req, body, res);
    if (area === "files-pri") return this.download(rest, req, res);
    if (area === "upload") return this.receiveUpload(rest.at(-1) ?? "", req, body, res);
    if (area === "respond") return this.receiveResponse(rest[0] ?? "", body, res);
    if (area === "signin") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end("<!DOCTYPE html><html><body>Sign in to Fake Slack</body></html>");
      return;
    }
    res.writeHead(404).end();
  }

  private async webApi(
    method: string,
    req: IncomingMessage,
    body: Buffer,
    res: ServerResponse,
  ): Promise<void> {
    const args = await parseArgs(req, body);
    const token = req.headers.authorization?.replace(/^Bearer /, "") ?? String(args.token ?? "");
    const call: RecordedCall = { at: Date.now(), method, status: 200, args: redactArgs(args) };
    this.calls.push(call);
    const limit = this.limits[method] ?? TIER[3];
    const bucket = method === "chat.postMessage" ? `${method}:${String(args.channel)}` : method;
    const forced = this.forcedLimits.get(method) ?? 0;
    const decision = forced > 0 ? undefined : this.limiter.decide(bucket, limit);
    if (forced > 0 || (decision && !decision.allowed)) {
      if (forced > 0) this.forcedLimits.set(method, forced - 1);
      const retryAfter = decision ? Math.max(1, Math.ceil(decision.retryAfterSeconds)) : 1;
      call.status = 429;
      call.error = "ratelimited";
      res.writeHead(429, { "content-type": "application/json", "retry-after": String(retryAfter) });
      res.end(JSON.stringify({ ok: false, error: "ratelimited" }));
      return;
    }
    const stall = this.stalls.findIndex((rule) => rule.match({ method, args }));
    if (stall >= 0) {
      const [rule] = this.stalls.splice(stall, 1);
      if (rule?.when === "after") await this.run(method, token, args).catch(() => {});
      rule?.stalled();
      return;
    }
    let result: Record<string, unknown>;
    try {
      const forcedError = this.forcedErrors.get(method);
      this.forcedErrors.delete(method);
      if (forcedError) throw fail(forcedError);
      if ([...this.outages].some((match) => match({ method, args }))) throw fail("service_unavailable");
      result = { ok: true, ...(await this.run(method, token, args)) };
    } catch (error) {
      if (!(error instanceof SlackApiError)) throw error;
      call.error = error.code;
      result = { ok: false, error: error.code, ...error.extra };
    }
    res.writeHead(200, { "content-type": "application/json; charset=utf-8" });
    res.end(JSON.stringify(result));
  }

  private async run(
    method: string,
    token: string,
    args: Record<string, unknown>,
  ): Promise<Record<string, unknown>> {
    if (method === "apps.connections.open") {
      if (token.startsWith("xoxb-")) throw fail("not_allowed_token_type");
      if (token !== this.appToken) throw fail("invalid_auth");
      return { url: `ws://127.0.0.1:${this.port}/link?ticket=${randomBytes(8).toString("hex")}` };
    }
    if (!token) throw fail("not_authed");
    if (token !== this.botToken)
      throw fail(token.startsWith("xapp-") ? "not_allowed_token_type" : "invalid_auth");
    const needed = NEEDS[method];
    if (needed && !this.scopes.has(needed))
      throw fail("missing_scope", { needed, provided: [...this.scopes].join(",") });
    const str = (name: string) => (args[name] === undefined ? undefined : String(args[name]));
    switch (method) {
      case "auth.test":
        return {
          url: "https://fake.slack.com/",
          team: "Fake",
          user: this.botUser.name,
          team_id: this.teamId,
          user_id: this.botUser.id,
          bot_id: this.botId,
          is_enterprise_install: false,
        };
      case "views.open":
        return { view: this.openView(str("trigger_id") ?? "", jsonArg(args.view)) };
      case "chat.postMessage": {
        const channel = this.postable(str("channel") ?? "");
        if (channel.restricted) throw fail("restricted_action");
        const text = this.text(str("text"));
        const metadata = args.metadata === undefined ? undefined : validMetadata(args.metadata);
        const message = this.store({
          channel: channel.id,
          user: this.botUser.id,
          text,
          files: [],
          threadTs: str("thread_ts"),
          ...(metadata ? { metadata } : {}),
        });
        return { channel: channel.id, ts: message.ts, message: this.messageJson(message) };
      }
      case "chat.update": {
        const message = this.messages.get(`${str("channel")}:${str("ts")}`);
        if (!message) throw fail("message_not_found");
        if (message.user !== this.botUser.id) throw fail("cant_update_message");
        message.text = this.text(str("text"));
        // Left as it was unless the update sets it.
        if (args.metadata !== undefined) message.metadata = validMetadata(args.metadata);
        if (args.file_ids !== undefined) {
          const ids = listArg(args.file_ids);
          for (const fileId of ids) {
            const file = this.files.get(fileId);
            if (!file || file.deleted || !file.completed || file.owner !== this.botUser.id)
              throw fail("file_not_found");
            file.channels.add(message.channel);
          }
          message.files = ids;
        }
        this.snapshot(message);
        return { channel: message.channel, ts: message.ts, text: message.text };
      }
      case "chat.postEphemeral": {
        const channel = this.postable(str("channel") ?? "");
        const user = str("user") ?? "";
        if (!channel.members.has(user)) throw fail("user_not_in_channel");
        this.ephemerals.push({
          channel: channel.id,
          user,
          text: this.text(str("text")),
          at: Date.now(),
          via: "api",
        });
        return { message_ts: this.nextTs() };
      }
      case "reactions.add": {
        const message = this.messages.get(`${str("channel")}:${str("timestamp")}`);
        if (!message) throw fail("message_not_found");
        if (!this.mustChannel(message.channel).members.has(this.botUser.id)) throw fail("not_in_channel");
        const name = str("name") ?? "";
        if (!EMOJI.has(name)) throw fail("invalid_name");
        const users = message.reactions.get(name) ?? new Set<string>();
        if (users.has(this.botUser.id)) throw fail("already_reacted");
        users.add(this.botUser.id);
        message.reactions.set(name, users);
        // Slack tells the app about its own reactions too (Bolt's ignoreSelf drops them).
        this.event({
          type: "reaction_added",
          user: this.botUser.id,
          reaction: name,
          item: { type: "message", channel: message.channel, ts: message.ts },
          item_user: message.user,
          event_ts: this.nextTs(),
        });
        return {};
      }
      case "files.info": {
        const file = this.files.get(str("file") ?? "");
        if (!file || !this.visibleToBot(file)) throw fail("file_not_found");
        if (file.deleted) throw fail("file_deleted");
        return { file: this.fileJson(file) };
      }
      case "files.getUploadURLExternal": {
        const filename = str("filename");
        const length = Number(str("length"));
        if (!filename || !Number.isInteger(length) || length < 1) throw fail("invalid_arguments");
        const file: FakeFile = {
          id: id("F"),
          name: filename,
          title: filename,
          mimetype: "",
          size: length,
          bytes: new Uint8Array(),
          owner: this.botUser.id,
          channels: new Set(),
          viaForm: false,
          uploaded: false,
          completed: false,
          deleted: false,
        };
        this.files.set(file.id, file);
        return { upload_url: `${this.origin}/upload/v1/${file.id}`, file_id: file.id };
      }
      case "files.completeUploadExternal": {
        const entries = jsonArg(args.files) as Array<{ id: string; title?: string }>;
        const files = entries.map((entry) => {
          const file = this.files.get(entry.id);
          if (!file || file.owner !== this.botUser.id || !file.uploaded) throw fail("file_not_found");
          return Object.assign(file, { completed: true, title: entry.title ?? file.name });
        });
        const channelId = str("channel_id");
        if (channelId) {
          const channel = this.postable(channelId);
          for (const file of files) file.channels.add(channel.id);
          this.store({
            channel: channel.id,
            user: this.botUser.id,
            text: str("initial_comment") ?? "",
            files: files.map((f) => f.id),
            threadTs: str("thread_ts"),
          });
        }
        return { files: files.map((f) => ({ id: f.id, title: f.title })) };
      }
      case "conversations.replies": {
        const channel = this.readableChannel(str("channel"));
        const ts = str("ts") ?? "";
        const parent = this.messages.get(`${channel.id}:${ts}`);
        if (!parent) throw fail("thread_not_found");
        const root = parent.threadTs ?? parent.ts;
        const thread = [...this.messages.values()]
          .filter((m) => m.channel === channel.id && (m.ts === root || m.threadTs === root))
          .sort((a, b) => Number(a.ts) - Number(b.ts));
        return this.messagePage(thread, str);
      }
      case "conversations.history": {
        // The channel's own messages (thread replies stay in their threads), newest first.
        const channel = this.readableChannel(str("channel"));
        const history = [...this.messages.values()]
          .filter((m) => m.channel === channel.id && (!m.threadTs || m.threadTs === m.ts))
          .sort((a, b) => Number(b.ts) - Number(a.ts));
        return this.messagePage(history, str);
      }
      case "files.delete": {
        const file = this.files.get(str("file") ?? "");
        if (!file || file.deleted) throw fail("file_not_found");
        if (file.owner !== this.botUser.id) throw fail("cant_delete_file");
        file.deleted = true;
        return {};
      }
      default:
        throw fail("unknown_method");
    }
  }

  /** A private file URL: the file's bytes for the bot token with files:read, Slack's sign-in page otherwise. */
  private download(path: string[], req: IncomingMessage, res: ServerResponse): void {
    const fileId = path[0]?.split("-")[1] ?? "";
    const file = this.files.get(fileId);
    const token = req.headers.authorization?.replace(/^Bearer /, "");
    if (token !== this.botToken || !this.scopes.has("files:read") || (file && !this.visibleToBot(file))) {
      res.writeHead(302, { location: `${this.origin}/signin` }).end();
      return;
    }
    if (!file || file.deleted) {
      res.writeHead(404, { "content-type": "text/plain" }).end("file not found");
      return;
    }
    res.writeHead(200, {
      "content-type": file.mimetype || "application/octet-stream",
      "content-length": file.bytes.byteLength,
    });
    res.end(file.bytes);
  }

  /** The external upload URL: takes the bytes (raw, or a multipart file part as the SDK sends). */
  private async receiveUpload(
    fileId: string,
    req: IncomingMessage,
    body: Buffer,
    res: ServerResponse,
  ): Promise<void> {
    const file = this.files.get(fileId);
    if (!file || file.uploaded) {
      res.writeHead(404).end();
      return;
    }
    let bytes: Uint8Array = body;
    const type = req.headers["content-type"] ?? "";
    if (type.startsWith("multipart/form-data")) {
      const form = await new Response(body, { headers: { "content-type": type } }).formData();
      const part = [...form.values()].find((v) => typeof v !== "string");
      bytes = typeof part === "object" ? new Uint8Array(await part.arrayBuffer()) : new Uint8Array();
    }
    Object.assign(file, { bytes, size: bytes.byteLength, uploaded: true, mimetype: sniff(file.name, bytes) });
    res.writeHead(200, { "content-type": "text/plain" }).end(`OK - ${bytes.byteLength}`);
  }

  /** A response_url: what a slash command or shortcut says later (ephemeral by default). */
  private receiveResponse(key: string, body: Buffer, res: ServerResponse): void {
    const known = this.responseUrls.get(key);
    if (!known) {
      res.writeHead(404).end("no_response_url");
      return;
    }
    // Slack takes a response_url 5 times within 30 minutes.
    if (Date.now() - known.at > this.responseUrlMs || known.uses >= 5) {
      res.writeHead(404).end(known.uses >= 5 ? "used_url" : "expired_url");
      return;
    }
    known.uses++;
    const target = { user: known.user, channel: known.channel };
    const message = JSON.parse(body.toString()) as { text?: string; response_type?: string };
    if (message.response_type === "in_channel") {
      this.store({ channel: target.channel, user: this.botUser.id, text: message.text ?? "", files: [] });
    } else {
      this.ephemerals.push({ ...target, text: message.text ?? "", at: Date.now(), via: "response_url" });
    }
    res.writeHead(200, { "content-type": "text/plain" }).end("ok");
  }

  // ── helpers ───────────────────────────────────────────────────────────────────────────────────

  private trigger(user: FakeUser): string {
    const trigger = `${Date.now()}.${randomBytes(6).toString("hex")}`;
    this.triggers.set(trigger, { user: user.id, at: Date.now(), used: false });
    return trigger;
  }

  private responseUrl(user: FakeUser, channel: FakeChannel): string {
    const key = randomBytes(8).toString("hex");
    this.responseUrls.set(key, { user: user.id, channel: channel.id, at: Date.now(), uses: 0 });
    return `${this.origin}/respond/${key}`;
  }

  /** views.open: a valid, unused trigger younger than 3 s, and a view Slack would accept. */
  private openView(trigger: string, view: unknown): Record<string, unknown> {
    const known = this.triggers.get(trigger);
    if (!known) throw fail("invalid_trigger_id");
    if (known.used) throw fail("trigger_exchanged");
    if (Date.now() - known.at > this.windowMs) throw fail("expired_trigger_id");
    const problems = validateModal(view);
    if (problems.length > 0)
      throw fail("invalid_arguments", {
        response_metadata: { messages: problems.map((p) => `[ERROR] ${p}`) },
      });
    known.used = true;
    const opened: FakeView = {
      id: id("V"),
      user: known.user,
      view: view as FakeView["view"],
      hash: randomBytes(6).toString("hex"),
      open: true,
      trigger,
    };
    this.views.set(opened.id, opened);
    return { id: opened.id, hash: opened.hash, ...opened.view };
  }

  /** A channel the bot may post in: one it is a member of, or a user's DM with it (by user id). */
  private postable(channelId: string): FakeChannel {
    if (channelId.startsWith("U")) {
      const existing = [...this.channels.values()].find((c) => c.kind === "im" && c.members.has(channelId));
      if (existing) return existing;
      const im: FakeChannel = {
        id: id("D"),
        name: channelId,
        kind: "im",
        members: new Set([channelId, this.botUser.id]),
      };
      this.channels.set(im.id, im);
      return im;
    }
    const channel = this.channels.get(channelId);
    if (!channel || (channel.kind !== "public" && !channel.members.has(this.botUser.id)))
      throw fail("channel_not_found");
    if (!channel.members.has(this.botUser.id)) throw fail("not_in_channel");
    return channel;
  }

  private text(text: string | undefined): string {
    if (!text) throw fail("no_text");
    if (text.length > 40_000) throw fail("msg_too_long");
    return text;
  }

  private visibleToBot(file: FakeFile): boolean {
    return (
      file.owner === this.botUser.id ||
      file.viaForm ||
      [...file.channels].some((c) => this.channels.get(c)?.members.has(this.botUser.id))
    );
  }

  private nextTs(): string {
    // Slack's ts: seconds and microseconds, unique per channel (here: everywhere).
    this.lastTs = Math.max(this.lastTs + 1, Date.now() * 1000);
    return `${Math.floor(this.lastTs / 1e6)}.${String(this.lastTs % 1e6).padStart(6, "0")}`;
  }

  private store(fields: Omit<FakeMessage, "ts" | "reactions" | "history">): FakeMessage {
    const message: FakeMessage = { ...fields, ts: this.nextTs(), reactions: new Map(), history: [] };
    this.messages.set(`${message.channel}:${message.ts}`, message);
    this.snapshot(message);
    return message;
  }

  private snapshot(message: FakeMessage): void {
    message.history.push({
      at: Date.now(),
      text: message.text,
      files: message.files.map((f) => this.files.get(f)?.name ?? f),
    });
  }

  fileJson(file: FakeFile): Record<string, unknown> {
    const base = `${this.origin}/files-pri/${this.teamId}-${file.id}`;
    const urls = file.external
      ? {
          is_external: true,
          external_type: file.external.type,
          ...(file.external.url ? { url_private: file.external.url, external_url: file.external.url } : {}),
        }
      : {
          is_external: false,
          url_private: `${base}/${encodeURIComponent(file.name)}`,
          url_private_download: `${base}/download/${encodeURIComponent(file.name)}`,
        };
    return {
      id: file.id,
      created: Math.floor(Date.now() / 1000),
      name: file.name,
      title: file.title,
      mimetype: file.mimetype,
      filetype: file.name.split(".").pop() ?? "",
      user: file.owner,
      size: file.size,
      mode: file.deleted ? "tombstone" : file.external ? "external" : "hosted",
      is_public: false,
      ...urls,
      permalink: `https://fake.slack.com/files/${file.owner}/${file.id}/${encodeURIComponent(file.name)}`,
      file_access: "visible",
    };
  }

  /** A channel conversations.* may read: one the bot sees, with the history scope of its kind. */
  private readableChannel(id: string | undefined): FakeChannel {
    const channel = this.channels.get(id ?? "");
    if (!channel || (channel.kind !== "public" && !channel.members.has(this.botUser.id)))
      throw fail("channel_not_found");
    const needed = HISTORY_SCOPES[channel.kind];
    if (!this.scopes.has(needed))
      throw fail("missing_scope", { needed, provided: [...this.scopes].join(",") });
    return channel;
  }

  /** One page of `limit` messages (Slack: at most 1,000), the cursor being where the next page starts. */
  private messagePage(messages: FakeMessage[], str: (name: string) => string | undefined) {
    const limit = Math.min(Number(str("limit") ?? 1000) || 1000, 1000);
    const start = Number(Buffer.from(str("cursor") ?? "", "base64url").toString() || 0);
    const more = start + limit < messages.length;
    const metadata = ["true", "1"].includes(str("include_all_metadata") ?? "");
    return {
      messages: messages.slice(start, start + limit).map((m) => this.messageJson(m, { metadata })),
      has_more: more,
      response_metadata: {
        next_cursor: more ? Buffer.from(String(start + limit)).toString("base64url") : "",
      },
    };
  }

  /** A message as the Web API shows it; its metadata only where asked for (include_all_metadata). */
  messageJson(message: FakeMessage, { metadata = false } = {}): Record<string, unknown> {
    return {
      type: "message",
      user: message.user,
      ts: message.ts,
      text: message.text,
      ...(message.user === this.botUser.id ? { bot_id: this.botId, app_id: this.appId } : {}),
      ...(message.threadTs ? { thread_ts: message.threadTs } : {}),
      ...(metadata && message.metadata ? { metadata: message.metadata } : {}),
      ...(message.files.length > 0
        ? {
            files: message.files
              .map((f) => this.files.get(f))
              .filter((f) => f !== undefined)
              .map((f) => this.fileJson(f)),
          }
        : {}),
    };
  }

  // ── queries for tests ─────────────────────────────────────────────────────────────────────────

  mustChannel(channelId: string): FakeChannel {
    const channel = this.channels.get(channelId);
    if (!channel) throw new Error(`no channel ${channelId}`);
    return channel;
  }

  /** The bot's messages in a channel (top level) or in one thread, oldest first. */
  posted(channel: string, thread?: string): FakeMessage[] {
    return [...this.messages.values()].filter(
      (m) =>
        m.channel === channel && m.user === this.botUser.id && (thread ? m.threadTs === thread : !m.threadTs),
    );
  }

  /** A message's files as the bot attached them (name and bytes). */
  filesOf(message: FakeMessage): FakeFile[] {
    return message.files
      .map((f) => this.files.get(f))
      .filter((f): f is FakeFile => f !== undefined && !f.deleted);
  }

  ephemeralsFor(user: FakeUser): FakeEphemeral[] {
    return this.ephemerals.filter((e) => e.user === user.id);
  }

  /** Polls until `probe` returns a value (not undefined/false), or fails naming what it waited for. */
  async waitFor<T>(
    what: string | (() => string),
    probe: () => T | undefined | false,
    timeoutMs = 30_000,
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = probe();
      if (value !== undefined && value !== false) return value;
      if (Date.now() > deadline)
        throw new Error(`fake Slack: timed out waiting for ${typeof what === "string" ? what : what()}`);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}

/** Web API arguments: form-encoded (what the WebClient sends) or JSON. */
async function parseArgs(req: IncomingMessage, body: Buffer): Promise<Record<string, unknown>> {
  const type = req.headers["content-type"] ?? "";
  if (type.startsWith("application/json"))
    return body.byteLength ? (JSON.parse(body.toString()) as Record<string, unknown>) : {};
  return Object.fromEntries(new URLSearchParams(body.toString()));
}

/** Complex arguments arrive JSON-encoded in form bodies. */
function jsonArg(value: unknown): unknown {
  return typeof value === "string" ? JSON.parse(value) : value;
}

/** Message metadata as Slack takes it: an event_type and an event_payload object (JSON in form bodies). */
function validMetadata(value: unknown): NonNullable<FakeMessage["metadata"]> {
  let metadata: unknown;
  try {
    metadata = jsonArg(value);
  } catch {
    throw fail("invalid_metadata_format");
  }
  const { event_type, event_payload } = (metadata ?? {}) as Record<string, unknown>;
  if (typeof event_type !== "string" || !event_type || typeof event_payload !== "object" || !event_payload)
    throw fail("invalid_metadata_format");
  return { event_type, event_payload: event_payload as Record<string, unknown> };
}

/** file_ids: a JSON array, or ids separated by commas. */
function listArg(value: unknown): string[] {
  if (Array.isArray(value)) return value.map(String);
  const text = String(value);
  return text.startsWith("[") ? (JSON.parse(text) as string[]) : text.split(",").filter(Boolean);
}

function redactArgs(args: Record<string, unknown>): Record<string, unknown> {
  const { token: _token, ...rest } = args;
  return rest;
}

/** What Slack checks of a modal before it opens (the parts the bot's forms could get wrong). */
function validateModal(raw: unknown): string[] {
  const problems: string[] = [];
  const view = raw as FakeView["view"] & { close?: { text: string } };
  if (view?.type !== "modal") return ["view.type must be modal"];
  if (!view.title?.text || view.title.text.length > 24) problems.push("title must be 1-24 characters");
  for (const button of [view.submit, view.close])
    if (button && button.text.length > 24) problems.push("button text over 24 characters");
  if ((view.private_metadata ?? "").length > 3000) problems.push("private_metadata over 3000 characters");
  if (view.blocks.length > 100) problems.push("more than 100 blocks");
  const ids = new Set<string>();
  for (const block of view.blocks) {
    const blockId = String(block.block_id ?? "");
    if (blockId && ids.has(blockId)) problems.push(`duplicate block_id ${blockId}`);
    ids.add(blockId);
    if (block.type !== "input") continue;
    if (!view.submit) problems.push("a view with inputs needs a submit button");
    const label = (block.label as { text?: string } | undefined)?.text ?? "";
    if (!label || label.length > 2000) problems.push(`${blockId}: label must be 1-2000 characters`);
    const hint = (block.hint as { text?: string } | undefined)?.text ?? "";
    if (hint.length > 2000) problems.push(`${blockId}: hint over 2000 characters`);
    const element = block.element as Record<string, unknown>;
    const known = ["file_input", "plain_text_input", "number_input", "static_select"];
    if (!known.includes(String(element?.type)))
      problems.push(`${blockId}: unknown element ${String(element?.type)}`);
    if (element.type === "file_input" && (Number(element.max_files) < 1 || Number(element.max_files) > 10))
      problems.push(`${blockId}: max_files must be 1-10`);
    if (element.type === "plain_text_input") {
      const max = Number(element.max_length ?? 3000);
      if (max > 3000) problems.push(`${blockId}: max_length over 3000`);
      if (String(element.initial_value ?? "").length > max)
        problems.push(`${blockId}: initial_value longer than max_length`);
    }
    if (element.type === "number_input" && typeof element.is_decimal_allowed !== "boolean")
      problems.push(`${blockId}: is_decimal_allowed is required`);
    if (element.type === "static_select") {
      const options = (element.options as Array<{ value: string }> | undefined) ?? [];
      if (options.length === 0 || options.length > 100) problems.push(`${blockId}: 1-100 options`);
      const initial = element.initial_option as { value: string } | undefined;
      if (initial && !options.some((o) => o.value === initial.value))
        problems.push(`${blockId}: initial_option not among options`);
    }
  }
  return problems;
}
