import { UserFacingError } from "../errors.js";

/** Collects every problem of a request's settings, so one UserFacingError can list them all. */
export class Problems {
  readonly list: string[] = [];
  int(what: string, v: unknown, lo: number, hi: number): void {
    if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
      this.list.push(`${what} must be a whole number from ${lo} to ${hi} (got ${String(v)})`);
    }
  }
  num(what: string, v: unknown, lo: number, hi: number, loOpen = false): void {
    if (typeof v !== "number" || !Number.isFinite(v) || (loOpen ? v <= lo : v < lo) || v > hi) {
      this.list.push(`${what} must be a number ${loOpen ? ">" : "≥"} ${lo} and ≤ ${hi} (got ${String(v)})`);
    }
  }
  throwIfAny(context: string): void {
    if (this.list.length > 0) throw new UserFacingError(`${context}: ${this.list.join("; ")}`);
  }
}
