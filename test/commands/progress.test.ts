import { describe, expect, it } from "vitest";
import { fitText, positionText, progressText, queueLine } from "../../src/commands/progress.js";

describe("progress text", () => {
  it("shows stage, a bar, step/total with percent, loss and ETA", () => {
    expect(
      progressText("imagic.train", {
        stage: "finetune",
        step: 150,
        total: 600,
        loss: 0.012345,
        etaSeconds: 125,
      }),
    ).toBe(
      "⏳ Imagic fine-tune: fine-tuning the model · `███░░░░░░░░░` 150/600 (25 %) · loss 0.0123 · about 2 min 05 s left",
    );
  });

  it("shows an unknown stage as reported and leaves out what is unknown", () => {
    expect(progressText("swap.edit", { stage: "blending", step: 0, total: 0 })).toBe(
      "⏳ Photoswap: blending",
    );
  });

  it("says where a waiting job is", () => {
    expect(
      positionText({ jobId: "7", name: "imagic.train", state: "waiting", position: 3, etaSeconds: 400 }),
    ).toBe("🕒 Imagic fine-tune: queued, position 3 · done in about 6 min 40 s");
    expect(positionText({ jobId: "7", name: "imagic.render", state: "waiting", position: 1 })).toBe(
      "🕒 Imagic render: next in line",
    );
    expect(queueLine({ jobId: "9", name: "swap.edit", state: "waiting-for-concept" }, undefined)).toBe(
      "🕒 Photoswap: waiting for the subject to be learned (job 9)",
    );
  });

  it("cuts text to a platform's limit and says so", () => {
    const cut = fitText("x".repeat(2100), 2000);
    expect(cut).toHaveLength(2000);
    expect(cut.endsWith("… (cut)")).toBe(true);
    expect(fitText("short", 2000)).toBe("short");
  });

  it("cuts between graphemes, never inside an emoji, a flag or a letter with its accent", () => {
    // Each of these is more than one UTF-16 unit; a cut through one leaves invalid or wrong text.
    for (const grapheme of ["🐈", "🐈‍⬛", "🇫🇷", "e\u0301", "1️⃣"]) {
      const text = `${"x".repeat(8)}${grapheme}${"y".repeat(20)}`;
      const cut = fitText(text, 10, "…");
      expect(cut).toBe(`${"x".repeat(8)}…`);
      expect(/\p{Surrogate}/u.test(cut)).toBe(false);
    }
    expect(fitText(`${"x".repeat(7)}🐈${"y".repeat(20)}`, 10, "…")).toBe(`${"x".repeat(7)}🐈…`);
  });
});
