// A fleet named by DNS (`dns:///noisesearch-models.NS.svc.cluster.local:50151`): a Kubernetes headless
// Service answers with one address per ready pod, so the name is resolved to every address, re-resolved on
// a period, and the fleet is told which endpoints came and went.
//
// Why not gRPC's own `dns:///` target with round_robin: a channel balances calls over addresses it hides,
// while the fleet must see each server (its model, health, concurrency limit, load) to route a batch.
import { lookup } from 'node:dns/promises';
import { FleetError } from './errors';

/** Every address (IPv4 and IPv6) a host name resolves to now. */
export type Resolver = (host: string) => Promise<string[]>;

/** The system resolver with every answer: /etc/hosts and DNS A/AAAA records, as getaddrinfo gives them. */
export const systemResolver: Resolver = async (host) => (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);

const DNS_TARGET = /^dns:\/\/\/([\w.-]+):(\d+)$/;

export function isDnsTarget(value: string): boolean {
  return value.startsWith('dns:');
}

/** `dns:///host:port` as host and port; anything else (an authority, no port) is refused in one line. */
export function parseDnsTarget(value: string): { host: string; port: number } {
  const match = DNS_TARGET.exec(value);
  if (!match) throw new FleetError('INVALID_ARGUMENT', `fleet: "${value}" is not a dns:///host:port target (e.g. dns:///noisesearch-models.default.svc.cluster.local:50151)`, false);
  return { host: match[1], port: Number(match[2]) };
}

/** An address and port as gRPC takes it: IPv6 in brackets. */
export function endpointAddress(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/**
 * Errors that mean "no such records now" rather than "DNS is unwell": a headless Service with no ready
 * pods answers NXDOMAIN, and then the fleet really is empty. Any other failure (a timeout, SERVFAIL)
 * keeps the last answer, so that a DNS hiccup does not drop a healthy fleet.
 */
const NO_RECORDS = new Set(['ENOTFOUND', 'ENODATA']);

export interface WatchOptions {
  resolver?: Resolver;
  /** How often the names are resolved again. */
  everyMs?: number;
  /** Told each time the set of addresses changes (sorted, deduplicated). */
  onChange: (addresses: string[]) => void;
  onError?: (target: string, error: Error) => void;
}

/** Resolves DNS targets now and every `everyMs`, until stopped. */
export class DnsWatch {
  /** Settles once every target has been resolved (or failed) once: the fleet routes nothing before. */
  readonly ready: Promise<void>;
  private readonly targets: { target: string; host: string; port: number; addresses: string[] }[];
  private readonly resolver: Resolver;
  private readonly everyMs: number;
  private readonly options: WatchOptions;
  private current = '';
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(targets: string[], options: WatchOptions) {
    this.targets = targets.map((target) => ({ target, ...parseDnsTarget(target), addresses: [] }));
    this.resolver = options.resolver ?? systemResolver;
    this.everyMs = options.everyMs ?? 5_000;
    this.options = options;
    this.ready = this.resolveAll();
  }

  /** Resolves every target once and reports a change; the next round is scheduled when this one ends, so rounds never overlap. */
  private async resolveAll(): Promise<void> {
    await Promise.all(
      this.targets.map(async (t) => {
        try {
          t.addresses = (await this.resolver(t.host)).map((ip) => endpointAddress(ip, t.port));
        } catch (error) {
          if (NO_RECORDS.has((error as NodeJS.ErrnoException).code ?? '')) t.addresses = [];
          this.options.onError?.(t.target, error as Error);
        }
      }),
    );
    if (this.stopped) return;
    const addresses = [...new Set(this.targets.flatMap((t) => t.addresses))].sort();
    const key = addresses.join(',');
    if (key !== this.current) {
      this.current = key;
      this.options.onChange(addresses);
    }
    // unref: a watch alone must not keep a process (a CLI command that is done) alive.
    this.timer = setTimeout(() => void this.resolveAll(), this.everyMs).unref();
  }

  /** The name an address was resolved from: what its server's certificate names, when the fleet talks TLS. */
  hostOf(address: string): string | undefined {
    return this.targets.find((t) => t.addresses.includes(address))?.host;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
