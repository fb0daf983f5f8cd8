// The line under the composer saying how many tokens are left. The page is the one place
// that words it: from the page config on load, from `start` frames, less what replies use.
// When this server cannot count tokens (no tiktoken vocabulary, no figures from the
// provider) it says so, rather than show a number that never goes down (issue #14).
import { config, state } from "./state.js";

export const CANNOT_COUNT = "Tokens left can't be shown: this server is not counting tokens.";

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
  const words = budgetLine(state.budget);
  const uncounted = Boolean(words) && !state.counting;
  line.textContent = uncounted ? CANNOT_COUNT : words;
  if (uncounted) line.title = config.how_to_count;
  else line.removeAttribute("title");
  line.dataset.counting = String(!uncounted);
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

/** A reply ended (`done`): take what it used off the line, counted as chat/budgets.py counts
 * it: our counts, else the provider's reported usage; with neither, the line says it can't. */
export function replyEnded({ prompt_tokens, completion_tokens, usage }) {
  let used = null;
  if (prompt_tokens != null || completion_tokens != null) used = (prompt_tokens || 0) + (completion_tokens || 0);
  else if (usage && (usage.prompt_tokens != null || usage.completion_tokens != null)) {
    used = (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
  }
  state.counting = used !== null;
  if (used) spendBudget(used);
  else showBudget(state.budget);
}
