// How the fake Slack hands requests to the app, in either of Slack's two ways:
// - Socket Mode: the app opened a WebSocket (apps.connections.open); each request is an envelope with an
//   envelope_id that the app must acknowledge on the socket within 3 s ({ envelope_id, payload }).
// - HTTP: a POST to the app's request URL signed with the signing secret (x-slack-signature over
//   "v0:timestamp:body", x-slack-request-timestamp); the HTTP response is the acknowledgement.
// Events the app does not acknowledge in time are retried, as Slack does, with retry_attempt /
// X-Slack-Retry-Num counting up.
import { createHmac, randomBytes } from "node:crypto";
import { request as httpRequest } from "node:http";
import type { WebSocket } from "ws";

export type EnvelopeType = "slash_commands" | "interactive" | "events_api";

export interface Delivery {
  id: string;
  type: EnvelopeType;
  payload: Record<string, unknown>;
  sentAt: number;
  /** 0 for the first delivery, then Slack's retry number. */
  retry: number;
  ackedAt?: number;
  /** The acknowledgement's payload (Socket Mode) or the response body (HTTP), parsed when JSON. */
  response?: unknown;
  /** HTTP mode: the response status. */
  status?: number;
  /** Resolves when the app acknowledged, or after the window (then ackedAt stays undefined). */
  settled: Promise<void>;
}

export interface SignedRequest {
  body: string;
  contentType: string;
  /** Seconds since the epoch; default now. */
  timestamp?: number;
  /** Default: the correct v0 signature of timestamp and body. */
  signature?: string;
  retry?: number;
}

export function sign(secret: string, timestamp: number, body: string): string {
  return `v0=${createHmac("sha256", secret).update(`v0:${timestamp}:${body}`).digest("hex")}`;
}

/** How each kind of request travels in HTTP mode (Socket Mode sends the payload object as it is). */
function httpBody(
  type: EnvelopeType,
  payload: Record<string, unknown>,
): { body: string; contentType: string } {
  switch (type) {
    case "events_api":
      return { body: JSON.stringify(payload), contentType: "application/json" };
    case "interactive":
      return {
        body: new URLSearchParams({ payload: JSON.stringify(payload) }).toString(),
        contentType: "application/x-www-form-urlencoded",
      };
    case "slash_commands":
      return {
        body: new URLSearchParams(payload as Record<string, string>).toString(),
        contentType: "application/x-www-form-urlencoded",
      };
  }
}

const parse = (text: string): unknown => {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
};

export class Deliveries {
  readonly sent: Delivery[] = [];
  private readonly sockets = new Set<WebSocket>();
  private readonly waiting = new Map<string, (response: unknown) => void>();
  /** HTTP mode: the app's request URL and the secret it checks signatures with. */
  http?: { url: string; signingSecret: string };

  constructor(
    private readonly windowMs: number,
    private readonly appId: string,
  ) {}

  get connected(): number {
    return this.sockets.size;
  }

  /** A Socket Mode connection from the app: hello, then envelopes and their acks. */
  attach(socket: WebSocket): void {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("message", (raw) => {
      const ack = JSON.parse(String(raw)) as { envelope_id?: string; payload?: unknown };
      if (ack.envelope_id) this.waiting.get(ack.envelope_id)?.(ack.payload);
    });
    socket.send(
      JSON.stringify({
        type: "hello",
        num_connections: this.sockets.size,
        debug_info: { host: "fake-slack", approximate_connection_time: 18060 },
        connection_info: { app_id: this.appId },
      }),
    );
  }

  /** Asks connected apps to reconnect, as Slack does when it recycles a connection's host. */
  recycle(): void {
    for (const socket of this.sockets)
      socket.send(JSON.stringify({ type: "disconnect", reason: "refresh_requested" }));
  }

  drop(): void {
    for (const socket of this.sockets) socket.terminate();
  }

  ping(): void {
    for (const socket of this.sockets) socket.ping();
  }

  /** Delivers a request; events that are not acknowledged in time are retried up to 3 times. */
  deliver(type: EnvelopeType, payload: Record<string, unknown>, retry = 0): Delivery {
    const id = randomBytes(8).toString("hex");
    let settle = () => {};
    const delivery: Delivery = {
      id,
      type,
      payload,
      sentAt: Date.now(),
      retry,
      settled: new Promise<void>((resolve) => {
        settle = resolve;
      }),
    };
    this.sent.push(delivery);
    const timer = setTimeout(() => {
      this.waiting.delete(id);
      settle();
      if (type === "events_api" && delivery.ackedAt === undefined && retry < 3)
        this.deliver(type, payload, retry + 1);
    }, this.windowMs);
    timer.unref();
    const acknowledged = (response: unknown, status?: number) => {
      clearTimeout(timer);
      this.waiting.delete(id);
      if (status === undefined || status === 200) delivery.ackedAt = Date.now();
      delivery.response = response;
      delivery.status = status;
      settle();
    };
    if (this.http) {
      const { body, contentType } = httpBody(type, payload);
      void this.post({ body, contentType, retry }).then(
        ({ status, text }) => acknowledged(parse(text), status),
        () => acknowledged(undefined, 0),
      );
    } else {
      this.waiting.set(id, (response) => acknowledged(response));
      const socket = [...this.sockets].at(-1);
      socket?.send(
        JSON.stringify({
          envelope_id: id,
          type,
          payload,
          accepts_response_payload: type !== "events_api",
          ...(type === "events_api"
            ? { retry_attempt: retry, retry_reason: retry > 0 ? "timeout" : "" }
            : {}),
        }),
      );
    }
    return delivery;
  }

  /** Slack's retry of a delivery the app may or may not have handled (same payload, same event_id). */
  redeliver(delivery: Delivery): Delivery {
    return this.deliver(delivery.type, delivery.payload, delivery.retry + 1);
  }

  /** A POST to the app's request URL, signed unless the test forges the signature or the timestamp. */
  async post(request: SignedRequest): Promise<{ status: number; text: string }> {
    const target = this.http;
    if (!target) throw new Error("the fake Slack is not in HTTP mode");
    const timestamp = request.timestamp ?? Math.floor(Date.now() / 1000);
    const headers = {
      "content-type": request.contentType,
      "content-length": String(Buffer.byteLength(request.body)),
      "x-slack-request-timestamp": String(timestamp),
      "x-slack-signature": request.signature ?? sign(target.signingSecret, timestamp, request.body),
      ...(request.retry
        ? { "x-slack-retry-num": String(request.retry), "x-slack-retry-reason": "http_timeout" }
        : {}),
    };
    // A connection per request, as Slack's many senders have: no idle keep-alive socket the app's server
    // may be closing just then.
    return new Promise((resolve, reject) => {
      const req = httpRequest(target.url, { method: "POST", headers, agent: false }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          text += chunk;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on("error", reject);
      req.end(request.body);
    });
  }
}
