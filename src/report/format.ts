// Number formatting shared by the report's tables, figures and gallery.

/** Significant-digit formatting that reads well in a table: 0.8123, 12.35, 1 234, 1.2e-5. */
export function fmt(value: number, digits = 4): string {
  if (!Number.isFinite(value)) return '–';
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e7)) return value.toExponential(2);
  if (Number.isInteger(value) && abs >= 1000) return value.toLocaleString('en-US');
  if (abs >= 1000) return Math.round(value).toLocaleString('en-US');
  return Number(value.toPrecision(digits)).toString();
}

