/** Captures what is written to stderr (the logs) while `fn` runs, sync or async. */
export async function captureStderr(fn: () => unknown): Promise<string> {
  const write = process.stderr.write;
  let captured = "";
  process.stderr.write = ((chunk: string | Uint8Array) => {
    captured += chunk.toString();
    return true;
  }) as typeof process.stderr.write;
  try {
    await fn();
  } finally {
    process.stderr.write = write;
  }
  return captured;
}
