// The line under the composer saying how many tokens are left. The page is the one place
// that words it: from the page config on load, from `start` frames, less what replies use.
import { state } from "./state.js";

/** `{tokens_left_today, tokens_left_this_month}` (either null when unlimited) in words. */
export function budgetLine(left) {
  const parts = [];
  if (left && left.tokens_left_today != null) {
    parts.push(`${left.tokens_left_today.toLocaleString()} tokens left today`);
  }
  if (left && left.tokens_left_this_month != null) {
    const month = left.tokens_left_this_month.toLocaleString();
    parts.push(parts.length ? `${month} this month` : `${month} tokens left this month`);
  }
  return parts.join(" · ");
}

export function showBudget(left) {
  state.budget = left ? { ...left } : null;
  const line = document.getElementById("budget");
  if (!line) return;
  line.textContent = budgetLine(state.budget);
  line.hidden = !line.textContent;
}

export function spendBudget(tokens) {
  const budget = state.budget;
  if (!budget || !tokens) return;
  const spend = (left) => (left == null ? null : Math.max(0, left - tokens));
  showBudget({
    tokens_left_today: spend(budget.tokens_left_today),
    tokens_left_this_month: spend(budget.tokens_left_this_month),
  });
}
