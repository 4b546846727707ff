export const TASK_QUEUE = 'noisesearch-search';
export const DEFAULT_NAMESPACE = 'default';
