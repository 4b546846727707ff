export const TASK_QUEUE = 'noisesearch-search';
export const DEFAULT_NAMESPACE = 'default';

/**
 * Temporal refuses a payload over 2 MiB; a workflow input is one. The campaign's input carries its dataset's
 * items, so its size is checked before the campaign starts; past the warning size the history's copies of it
 * (one per continue-as-new) start to weigh.
 */
export const CAMPAIGN_INPUT_LIMIT_BYTES = 2 * 1024 * 1024;
export const CAMPAIGN_INPUT_WARN_BYTES = 512 * 1024;
