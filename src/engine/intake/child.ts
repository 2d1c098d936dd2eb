// A decoder process of the intake (pool.ts starts it): converts one upload at a time and answers with
// the PNG or the refusal. Its libvips error buffer only ever holds the current upload's text.
import sharp from "sharp";
import { ImageInputError } from "../image.js";
import { convertPhoto } from "./convert.js";
import type { DecodeReply, DecodeRequest } from "./pool.js";

// Each upload is decoded once: libvips' operation cache would only keep hostile bytes' results around.
sharp.cache(false);
const send = (reply: DecodeReply) => process.send?.(reply);
process.on("disconnect", () => process.exit(0));
process.on("message", (request: DecodeRequest) => {
  convertPhoto(request.bytes, request.limits).then(
    (photo) => send({ id: request.id, photo }),
    (err: unknown) =>
      send(
        err instanceof ImageInputError
          ? {
              id: request.id,
              refusal: { message: err.message, ...(err.detail ? { detail: err.detail } : {}) },
            }
          : { id: request.id, error: err instanceof Error ? (err.stack ?? err.message) : String(err) },
      ),
  );
});
send({ ready: true });
