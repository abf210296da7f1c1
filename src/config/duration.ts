/**
 * Durations in config are strings such as `250ms`, `15s`, `1m`, `1h`. A bare number is refused
 * (`interval: 2` could mean 2 ms or 2 s); only `0` may go without a unit.
 */
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses a duration to whole milliseconds; returns undefined when the text is not a duration. */
export function parseDuration(text: string | number): number | undefined {
  if (typeof text === "number") return text === 0 ? 0 : undefined;
  const m = DURATION.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * UNIT_MS[m[2]!]!);
}

/**
 * Whole milliseconds written back with the largest unit that divides them exactly, as a config
 * would say them: 250 -> "250ms", 15000 -> "15s", 60000 -> "1m"; 0 stays 0 (written unit-less).
 */
export function formatDuration(ms: number): string | 0 {
  if (ms === 0) return 0;
  for (const [unit, size] of [["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
