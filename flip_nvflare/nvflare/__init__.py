"""Mirror of FLIP's ``flip.nvflare`` package, so FLIP apps only change their import lines."""
