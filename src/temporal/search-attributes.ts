// Search attributes that let operators filter searches in the Temporal UI and CLI, e.g.
// `temporal workflow list --query 'NoisesearchAlgorithm = "paths" AND NoisesearchBestScore > -0.1'`.
// The embedded dev server registers them at start; on a cluster, create them once with
// `temporal operator search-attribute create` (the names and types below).
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

export const SEARCH_ATTRIBUTES = {
  algorithm: defineSearchAttributeKey('NoisesearchAlgorithm', SearchAttributeType.KEYWORD),
  model: defineSearchAttributeKey('NoisesearchModel', SearchAttributeType.KEYWORD),
  verifier: defineSearchAttributeKey('NoisesearchVerifier', SearchAttributeType.KEYWORD),
  nfeSpent: defineSearchAttributeKey('NoisesearchNfeSpent', SearchAttributeType.INT),
  bestScore: defineSearchAttributeKey('NoisesearchBestScore', SearchAttributeType.DOUBLE),
};

const CLI_TYPE: Record<string, string> = { KEYWORD: 'Keyword', INT: 'Int', DOUBLE: 'Double' };

/** `temporal server start-dev` flags that register every attribute. */
export function devServerSearchAttributeFlags(): string[] {
  return Object.values(SEARCH_ATTRIBUTES).flatMap((key) => ['--search-attribute', `${key.name}=${CLI_TYPE[key.type]}`]);
}
