// Campaign progress on the terminal: a live bar on a TTY, plain sentences every few seconds otherwise (CI logs, pipes).
import type { CampaignProgress } from '../../workflows/campaign';
import type { FleetWait } from '../fleet/wait';
import { reportWait } from './waiting';

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}:${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}` : `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

export function progressLine(p: CampaignProgress, elapsedSeconds: number, width = 24, waiting = false): string {
  const finished = p.done + p.failed;
  const fraction = p.total > 0 ? finished / p.total : 1;
  const ranHere = finished - p.skipped;
  const eta = ranHere > 0 ? (elapsedSeconds / ranHere) * (p.total - finished) : Number.NaN;
  const filled = Math.round(fraction * width);
  const bar = `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
  const phase = p.phase === 'metrics' ? ' · population metrics' : '';
  const stalled = waiting ? ' · waiting for model servers' : '';
  return `[${bar}] ${finished}/${p.total} searches · ${p.running} running · ${p.failed} failed · ${p.nfeSpent.toLocaleString('en-US')} NFEs · ETA ${duration(eta)}${phase}${stalled}`;
}

/** The same progress as a sentence, for logs and pipes: no bar to redraw there. */
export function progressSentence(p: CampaignProgress, elapsedSeconds: number, waiting = false): string {
  const finished = p.done + p.failed;
  const ranHere = finished - p.skipped;
  const eta = ranHere > 0 ? (elapsedSeconds / ranHere) * (p.total - finished) : Number.NaN;
  const left = finished === p.total ? '' : Number.isFinite(eta) ? `, about ${duration(eta)} left` : '';
  const phase = p.phase === 'metrics' ? '; computing population metrics' : '';
  const stalled = waiting ? '; waiting for model servers' : '';
  return `${finished} of ${p.total} searches finished (${p.failed} failed), ${p.running} running, ${p.nfeSpent.toLocaleString('en-US')} NFEs${left}${phase}${stalled}`;
}

/** How often a non-TTY gets a progress sentence: often enough to see it move, seldom enough for a log. */
const PLAIN_EVERY_MS = 5_000;

export class ProgressDisplay {
  private lastPlain = '';
  private lastPlainAt = 0;
  private readonly started = Date.now();
  private waiting: FleetWait | null = null;

  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {}

  /** A running search retries a failed call (the fleet is down): say so once, and again when it is over. */
  setWaiting(wait: FleetWait | null): void {
    if (Boolean(wait) !== Boolean(this.waiting) || (wait && wait.lastFailure !== this.waiting?.lastFailure)) {
      if (this.out.isTTY) this.out.write('\r\x1b[2K');
      this.waiting = reportWait(this.waiting, wait, (line) => this.out.write(`${line}\n`));
    }
  }

  update(progress: CampaignProgress): void {
    if (this.out.isTTY) {
      const line = progressLine(progress, (Date.now() - this.started) / 1000, 24, this.waiting !== null);
      this.out.write(`\r\x1b[2K${line.slice(0, (this.out.columns ?? 120) - 1)}`);
      return;
    }
    const counts = `${progress.done}/${progress.failed}/${progress.phase}`;
    if (counts !== this.lastPlain && Date.now() - this.lastPlainAt >= PLAIN_EVERY_MS) {
      this.out.write(`${progressSentence(progress, (Date.now() - this.started) / 1000, this.waiting !== null)}\n`);
      this.lastPlain = counts;
      this.lastPlainAt = Date.now();
    }
  }

  /** The command stops showing progress without a result (Ctrl-C, --wait): the bar's line is ended, not overwritten. */
  leave(): void {
    if (this.out.isTTY) this.out.write('\n');
  }

  finish(progress: CampaignProgress): void {
    const elapsed = (Date.now() - this.started) / 1000;
    this.out.write(this.out.isTTY ? `\r\x1b[2K${progressLine(progress, elapsed)}\n` : `${progressSentence(progress, elapsed)}\n`);
  }
}
