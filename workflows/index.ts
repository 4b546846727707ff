export { progressQuery, searchWorkflow, setBudgetUpdate, stopSignal } from './search';
