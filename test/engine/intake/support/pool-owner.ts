// A process that owns a decoder pool (as the bot does): starts two decoders, prints their ids, and
// waits to be killed (intake.test.ts: its decoders must not outlive it).
import { readFileSync } from "node:fs";
import { DecoderPool } from "../../../../src/engine/intake/pool.js";
import { DEFAULT_IMAGE_LIMITS } from "../../../../src/spec/upload.js";

const photo = new Uint8Array(readFileSync("test/fixtures/images/coffee.png"));
const pool = new DecoderPool({ size: 2 });
await Promise.all([pool.convert(photo, DEFAULT_IMAGE_LIMITS), pool.convert(photo, DEFAULT_IMAGE_LIMITS)]);
process.stdout.write(`${JSON.stringify(pool.pids)}\n`);
setInterval(() => {}, 60_000);
