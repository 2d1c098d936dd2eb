import { describe, expect, it } from "vitest";
import { UserFacingError } from "../../src/errors.js";
import { parsePayload } from "../../src/queue/client.js";
import { MAX_PAYLOAD_BYTES, referencedBlobs } from "../../src/queue/jobs.js";
import { priorityFor } from "../../src/queue/priority.js";

const id = (c: string) => c.repeat(64);
const base = { userId: "u1", origin: { platform: "discord", channel: "c" } };
/** A swap.edit payload for `subject`. */
const swapEdit = (subject: string) => ({
  ...base,
  sourceBlobId: id("a"),
  referenceBlobIds: [id("b")],
  subject,
});

function refusal(name: string, input: unknown): string {
  try {
    parsePayload(name, input);
  } catch (error) {
    expect(error).toBeInstanceOf(UserFacingError);
    return (error as Error).message;
  }
  throw new Error("expected a refusal");
}

describe("job payloads", () => {
  it("applies defaults to a minimal imagic.train request", () => {
    const { payload } = parsePayload<"imagic.train">("imagic.train", {
      ...base,
      imageBlobId: id("a"),
      prompt: "a dog",
    });
    expect(payload.options.preset).toBe("balanced");
    expect(referencedBlobs("imagic.train", payload)).toEqual([{ id: id("a"), label: "the photo" }]);
  });

  it("names unknown job types and lists the known ones", () => {
    expect(refusal("imagic.upscale", base)).toBe(
      'unknown job type "imagic.upscale"; the engine runs imagic.train, imagic.render, swap.concept, swap.edit',
    );
  });

  it("names the field and the limit of a bad value", () => {
    const message = refusal("imagic.render", { ...base, stateBlobId: id("b"), seeds: [1], etas: [3] });
    expect(message).toMatch(/^invalid imagic.render request: etas\.0: .*1\.5/);
    expect(refusal("imagic.train", { ...base, imageBlobId: "../../etc/passwd", prompt: "x" })).toContain(
      "imageBlobId: must be a blob id",
    );
    expect(
      refusal("imagic.train", { ...base, imageBlobId: id("a"), prompt: "x", path: "/tmp/x.png" }),
    ).toContain('Unrecognized key: "path"');
  });

  // imagic.train's photo and swap.edit's source photo: the same fields, checked by the same spec.
  it.each([
    {
      name: "imagic.train" as const,
      job: (options?: Record<string, unknown>) => ({ ...base, imageBlobId: id("a"), prompt: "x", options }),
    },
    {
      name: "swap.edit" as const,
      job: (options?: Record<string, unknown>) => ({
        ...base,
        sourceBlobId: id("a"),
        referenceBlobIds: [id("b")],
        subject: "cat",
        options,
      }),
    },
  ])(
    "$name takes a forced working size as width and height together, within src/spec/shape.ts's limits",
    ({ name, job }) => {
      const { payload } = parsePayload<typeof name>(name, job({ seeds: [1], width: 768, height: 512 }));
      expect(payload.options).toMatchObject({ width: 768, height: 512 });
      // It survives the queue's JSON as it is; a job without one (as older jobs are) has neither field.
      expect(parsePayload(name, JSON.parse(JSON.stringify(payload))).payload).toEqual(payload);
      const unsized = parsePayload<typeof name>(name, job()).payload.options;
      expect(unsized).not.toHaveProperty("width");
      expect(unsized).not.toHaveProperty("height");
      expect(refusal(name, job({ width: 768 }))).toContain("width: give both width and height, or neither");
      expect(refusal(name, job({ width: 2048, height: 1024 }))).toContain(
        "width: width × height must be at most 1048576 pixels (1024²)",
      );
      expect(refusal(name, job({ width: 1024, height: 128 }))).toContain(
        "width: width × height must have an aspect ratio of at most 4:1",
      );
      expect(refusal(name, job({ width: 32, height: 64 }))).toMatch(/width: .*64/);
    },
  );

  it("refuses more images than a render may make", () => {
    const seeds = Array.from({ length: 16 }, (_, i) => i);
    const message = refusal("imagic.render", { ...base, stateBlobId: id("b"), seeds, etas: [0.5, 1, 1.5] });
    expect(message).toContain("at most 32 images");
  });

  it("refuses oversized payloads before parsing them", () => {
    const prompt = "x".repeat(MAX_PAYLOAD_BYTES);
    expect(refusal("imagic.train", { ...base, imageBlobId: id("a"), prompt })).toMatch(
      /^the imagic.train request is 16\.\d KiB; the limit is 16 KiB/,
    );
  });

  it("takes a swap's strengths list (one grid row each), each within steps, seeds × strengths within 16", () => {
    const edit = (options: Record<string, unknown>) => ({ ...swapEdit("cat"), options });
    const strength = (n: number) => ({ selfOutputSteps: n, selfMapSteps: n, crossMapSteps: n });
    const { payload } = parsePayload<"swap.edit">(
      "swap.edit",
      edit({ seeds: [1, 2], strengths: [strength(5), strength(20)] }),
    );
    expect(payload.options.strengths).toEqual([strength(5), strength(20)]);
    expect(refusal("swap.edit", edit({ steps: 30, strengths: [strength(5), strength(31)] }))).toContain(
      "strengths.1.selfOutputSteps: self_output_steps counts sampling steps: at most steps (30), got 31",
    );
    expect(
      refusal("swap.edit", edit({ seeds: [1, 2, 3, 4, 5], strengths: [1, 2, 3, 4].map(strength) })),
    ).toContain("strengths: seeds × strengths must be at most 16 variants, got 20");
    expect(refusal("swap.edit", edit({ strengths: [] }))).toContain("strengths");
  });

  it("refuses a swap whose subject is more than one word, before its concept is learned", () => {
    expect(parsePayload<"swap.edit">("swap.edit", swapEdit(" cat ")).payload.subject).toBe("cat");
    expect(refusal("swap.edit", swapEdit("hot dog"))).toMatch(/subject: must be one word/);
    expect(refusal("swap.edit", swapEdit("cat\tdog"))).toMatch(/subject: must be one word/);
    // A concept alone may be learned for a phrase ("sks hot dog").
    const concept = { ...base, referenceBlobIds: [id("b")], subject: "hot dog" };
    expect(parsePayload<"swap.concept">("swap.concept", concept).payload.subject).toBe("hot dog");
  });

  it("refuses the subjects chat refuses (the concept token, the prompt's other words), in chat's words", () => {
    for (const word of ["sks", "SKS"]) {
      expect(refusal("swap.edit", swapEdit(word))).toContain(
        `subject: cannot be "${word}": I learn the new subject as "sks <subject>"`,
      );
    }
    for (const word of ["a", "photo", "of"]) {
      expect(refusal("swap.edit", swapEdit(` ${word} `))).toContain(
        `subject: "${word}" is also another word of "a photo of a ${word}", where the swap finds it`,
      );
    }
    for (const word of ["Photo", "skis"])
      expect(parsePayload<"swap.edit">("swap.edit", swapEdit(word)).payload.subject).toBe(word);
  });

  it("lists every blob of a swap with the words a user knows them by", () => {
    const { payload } = parsePayload<"swap.edit">("swap.edit", {
      ...base,
      sourceBlobId: id("a"),
      referenceBlobIds: [id("b"), id("c")],
      subject: "cat",
    });
    expect(referencedBlobs("swap.edit", payload).map((r) => r.label)).toEqual([
      "the source photo",
      "reference photo 1",
      "reference photo 2",
    ]);
  });
});

describe("priorities", () => {
  it("puts every short job before any long one, and a user's n-th job behind others' earlier ones", () => {
    expect(priorityFor("imagic.render", 5)).toBeLessThan(priorityFor("imagic.train", 0));
    expect(priorityFor("swap.edit", 31)).toBeLessThan(priorityFor("swap.concept", 0));
    expect(priorityFor("imagic.render", 0)).toBeLessThan(priorityFor("imagic.render", 1));
    expect(priorityFor("imagic.train", 100)).toBe(priorityFor("imagic.train", 31));
    const firsts = (["imagic.render", "swap.edit", "imagic.train", "swap.concept"] as const).map((n) =>
      priorityFor(n, 0),
    );
    expect(firsts).toEqual([...firsts].sort((a, b) => a - b));
  });
});
