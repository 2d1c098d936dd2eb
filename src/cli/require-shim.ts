import { createRequire } from "node:module";

// The single-file ESM bundle (esbuild --format=esm, used on GPU hosts) keeps CommonJS dependencies'
// require("node:…") calls, which throw there unless a global require exists. Imported first by the
// entry, so it runs before any dependency's code.
globalThis.require ??= createRequire(import.meta.url);
