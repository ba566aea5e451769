# The instruction-set files and the only flags each is compiled with; every other file gets none.
# setup.py reads this table and tests/fuzz/Makefile includes it, so the two builds cannot drift.
# Make syntax, one `file.c = flags` a line (plain `=`, no continuation lines).
kernels_avx2.c = -mavx2 -mbmi2 -mf16c -mfma
kernels_avx512.c = -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vbmi -mbmi2 -mf16c -mpclmul -mvpclmulqdq
crc32_pclmul.c = -mpclmul -msse4.1
