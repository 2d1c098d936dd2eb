/**
 * onnxruntime's profiler output (a Chrome trace JSON) summed per op type and execution provider: where
 * the time goes, and which nodes a GPU provider left on the CPU. On GPU providers a kernel's time is
 * what the host spent on it (launch, or the whole kernel where the provider waits), not GPU time; the
 * WebGPU provider also records each shader's GPU time (timestamp queries, where the adapter has them),
 * summed here as provider "WebGPU:gpu" with op "<op type>/<shader program>".
 */
import { readdirSync, readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";

export interface ProfileRow {
  op: string;
  provider: string;
  nodes: number;
  /** Kernel time summed over all runs in the file, in milliseconds. */
  ms: number;
}

interface TraceEvent {
  cat?: string;
  name?: string;
  dur?: number;
  args?: { op_name?: string; provider?: string; node_index?: string };
}

/** The newest profile file onnxruntime wrote for `prefix` (it appends a timestamp to the prefix). */
export function latestProfile(prefix: string): string | undefined {
  const dir = dirname(prefix);
  const base = basename(prefix);
  const files = readdirSync(dir)
    .filter((f) => f.startsWith(base) && f.endsWith(".json"))
    .sort();
  const last = files[files.length - 1];
  return last ? join(dir, last) : undefined;
}

export function summarizeProfile(file: string): ProfileRow[] {
  const events = JSON.parse(readFileSync(file, "utf8")) as TraceEvent[];
  const rows = new Map<string, ProfileRow & { seen: Set<string> }>();
  const add = (op: string, provider: string, node: string, dur: number) => {
    const key = `${op}\u0000${provider}`;
    let row = rows.get(key);
    if (!row) {
      row = { op, provider, nodes: 0, ms: 0, seen: new Set() };
      rows.set(key, row);
    }
    row.ms += dur / 1000;
    row.seen.add(node);
  };
  for (const e of events) {
    // WebGPU shader timings: name = "<node name>&<op type>&<program name>", duration in µs of GPU time.
    const parts = e.cat === "Api" ? (e.name?.split("&") ?? []) : [];
    if (parts.length === 3) {
      const [node, op, program] = parts as [string, string, string];
      add(program === op ? op : `${op}/${program}`, "WebGPU:gpu", node, e.dur ?? 0);
      continue;
    }
    if (e.cat !== "Node" || !e.name?.endsWith("_kernel_time") || !e.args?.op_name) continue;
    const provider = (e.args.provider ?? "?").replace(/ExecutionProvider$/, "");
    add(e.args.op_name, provider, e.args.node_index ?? e.name, e.dur ?? 0);
  }
  return [...rows.values()].map(({ seen, ...r }) => ({ ...r, nodes: seen.size })).sort((a, b) => b.ms - a.ms);
}
