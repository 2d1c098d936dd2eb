import { Command } from "commander";
import { chaosBenchCommand } from "./chaos.js";
import { chaosBotCommand } from "./chaos-bot.js";
import { graphBenchCommand } from "./graph.js";
import { imagicBenchCommand } from "./imagic.js";
import { intakeBenchCommand } from "./intake.js";
import { parityBenchCommand } from "./parity.js";
import { photoswapBenchCommand } from "./photoswap.js";
import { queueBenchCommand } from "./queue.js";
import { sdBenchCommand } from "./sd.js";

/** One factory per benchmark, each in its own file here (graph.ts, sd.ts, imagic.ts, photoswap.ts, parity.ts, queue.ts, intake.ts, chaos.ts). */
const BENCHMARKS: Array<() => Command> = [
  graphBenchCommand,
  sdBenchCommand,
  imagicBenchCommand,
  photoswapBenchCommand,
  parityBenchCommand,
  queueBenchCommand,
  intakeBenchCommand,
  chaosBenchCommand,
];

export function benchCommand(): Command {
  const bench = new Command("bench").description(
    "measure the engine: npm run bench -- <name> [--device cpu|webgpu|cuda]",
  );
  for (const make of BENCHMARKS) bench.addCommand(make());
  // The chaos run's bot process: started by `bench chaos`, not listed.
  bench.addCommand(chaosBotCommand(), { hidden: true });
  return bench;
}
