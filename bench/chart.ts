/**
 * The chart `make bench` writes beside its JSON: for each message size, msg/s
 * of Letterbox, nodemailer's smtp-server and the disk loop per cell
 * (connections x plain/STARTTLS), and each server's CPU per message. Plain
 * SVG text, no library: bars, axes and labels are all it needs.
 *
 * @module
 */

/** What the chart needs of one row of the benchmark. */
export interface ChartRow {
  connections: number;
  size: number;
  tls: boolean;
  messagesPerSecond: number;
  cpuPerMessage: number;
  diskCeiling: number;
  peer?: { messagesPerSecond: number; cpuPerMessage: number };
}

const SERIES = [
  { name: "Letterbox", color: "#2b6cb0" },
  { name: "smtp-server", color: "#dd6b20" },
  { name: "disk loop", color: "#a0aec0" },
] as const;

const PANEL_WIDTH = 470;
const PANEL_HEIGHT = 230;
const MARGIN = { top: 34, right: 10, bottom: 44, left: 56 };
const LEGEND_HEIGHT = 30;

function escape(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

function sizeName(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes >> 20} MiB` : `${bytes >> 10} KiB`;
}

/** A round upper bound for an axis and its tick step: 1, 2 or 5 times a power of ten. */
export function niceScale(max: number, ticks = 4): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const rough = max / ticks;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough)!;
  return { top: Math.ceil(max / step) * step, step };
}

function formatTick(value: number): string {
  if (value >= 1000) return `${+(value / 1000).toFixed(1)}k`;
  return `${+value.toFixed(2)}`;
}

interface Bar {
  value: number;
  series: number;
}

// One panel: groups of bars along x, a linear y axis from 0.
function panel(
  x: number,
  y: number,
  title: string,
  unit: string,
  groups: { label: string; bars: Bar[] }[],
): string {
  const width = PANEL_WIDTH - MARGIN.left - MARGIN.right;
  const height = PANEL_HEIGHT - MARGIN.top - MARGIN.bottom;
  const left = x + MARGIN.left;
  const top = y + MARGIN.top;
  const max = Math.max(0, ...groups.flatMap((group) => group.bars.map((bar) => bar.value)));
  const { top: axisTop, step } = niceScale(max);
  const scale = (value: number) => height * Math.min(1, value / axisTop);
  const parts = [
    `<text x="${x + PANEL_WIDTH / 2}" y="${y + 18}" text-anchor="middle" font-weight="bold">${
      escape(title)
    }</text>`,
    `<text x="${x + 12}" y="${top + height / 2}" text-anchor="middle" transform="rotate(-90 ${
      x + 12
    } ${top + height / 2})">${escape(unit)}</text>`,
  ];
  for (let tick = 0; tick <= axisTop + step / 2; tick += step) {
    const ty = top + height - scale(tick);
    parts.push(
      `<line x1="${left}" x2="${left + width}" y1="${ty}" y2="${ty}" stroke="#e2e8f0"/>`,
      `<text x="${left - 6}" y="${ty + 4}" text-anchor="end">${formatTick(tick)}</text>`,
    );
  }
  const groupWidth = width / Math.max(1, groups.length);
  groups.forEach((group, g) => {
    const barWidth = (groupWidth * 0.8) / Math.max(1, group.bars.length);
    const start = left + g * groupWidth + groupWidth * 0.1;
    group.bars.forEach((bar, b) => {
      const h = scale(bar.value);
      const series = SERIES[bar.series];
      parts.push(
        `<rect x="${(start + b * barWidth).toFixed(1)}" y="${(top + height - h).toFixed(1)}" ` +
          `width="${(barWidth - 1).toFixed(1)}" height="${h.toFixed(1)}" fill="${series.color}">` +
          `<title>${
            escape(
              `${group.label.replace("\n", " ")}, ${series.name}: ${formatTick(bar.value)} ${unit}`,
            )
          }` +
          `</title></rect>`,
      );
    });
    const [first, second] = group.label.split("\n");
    const cx = left + (g + 0.5) * groupWidth;
    parts.push(
      `<text x="${cx}" y="${top + height + 16}" text-anchor="middle">${escape(first)}</text>`,
      `<text x="${cx}" y="${top + height + 30}" text-anchor="middle">${
        escape(second ?? "")
      }</text>`,
    );
  });
  parts.push(
    `<line x1="${left}" x2="${left + width}" y1="${top + height}" y2="${
      top + height
    }" stroke="#4a5568"/>`,
  );
  return parts.join("\n");
}

/** The chart as an SVG document; `caption` names the run and the machine. */
export function chartSvg(rows: readonly ChartRow[], caption: string): string {
  const sizes = [...new Set(rows.map((row) => row.size))].sort((a, b) => a - b);
  const width = PANEL_WIDTH * 2;
  const height = LEGEND_HEIGHT + sizes.length * PANEL_HEIGHT + 24;
  const parts: string[] = [];
  sizes.forEach((size, i) => {
    const cells = rows.filter((row) => row.size === size)
      .sort((a, b) => a.connections - b.connections || Number(a.tls) - Number(b.tls));
    const label = (row: ChartRow) => `${row.connections} conn\n${row.tls ? "STARTTLS" : "plain"}`;
    const y = LEGEND_HEIGHT + i * PANEL_HEIGHT;
    parts.push(panel(
      0,
      y,
      `${sizeName(size)} messages: throughput`,
      "msg/s",
      cells.map((row) => ({
        label: label(row),
        bars: [
          { value: row.messagesPerSecond, series: 0 },
          ...(row.peer ? [{ value: row.peer.messagesPerSecond, series: 1 }] : []),
          { value: row.diskCeiling, series: 2 },
        ],
      })),
    ));
    parts.push(panel(
      PANEL_WIDTH,
      y,
      `${sizeName(size)} messages: server CPU per message`,
      "ms",
      cells.map((row) => ({
        label: label(row),
        bars: [
          { value: row.cpuPerMessage, series: 0 },
          ...(row.peer ? [{ value: row.peer.cpuPerMessage, series: 1 }] : []),
        ],
      })),
    ));
  });
  const legend = SERIES.map((series, i) =>
    `<rect x="${20 + i * 150}" y="8" width="14" height="14" fill="${series.color}"/>` +
    `<text x="${40 + i * 150}" y="20">${series.name}</text>`
  ).join("\n");
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    legend,
    ...parts,
    `<text x="${width / 2}" y="${height - 8}" text-anchor="middle" fill="#4a5568">${
      escape(caption)
    }</text>`,
    `</svg>`,
    "",
  ].join("\n");
}
