export { progressQuery, searchWorkflow, setBudgetUpdate, stopSignal } from './search';
export { campaignProgressQuery, campaignWorkflow } from './campaign';
