"""The paper's published numbers, in one place and labelled as the paper's (Sec. 3, Tables 1-2).

Nothing here is ours: these are the values printed in Feng et al. (2024) for ChatGLM2-6B on Tesla A100 GPUs. The
tables (`grid/tables.py`) print them beside our rows, and the memory model (`measure/memory_model.py`) sets its
predictions beside their Memory/MB column; neither types a published number of its own.
"""

PAPER_SOURCE = "paper (ChatGLM2-6B)"  # the Source column of a published row
PAPER_MODEL_LABEL = "GLM2"  # the paper's name for its base model; its rows are GLM2, GLM2+LoRA, …

# Tables 1 (Alpaca_Chinese) and 2 (School_math) as published: Rouge-1, Rouge-2, Rouge-L, BLEU, Avg, Memory/MB.
PAPER_ROWS = {
    1: {
        "base": (0.2962, 0.1288, 0.1612, 0.1337, 0.1799, 51875),
        "lora": (0.3036, 0.1484, 0.1950, 0.1572, 0.2010, 40132),
        "qlora": (0.3368, 0.1657, 0.2117, 0.1828, 0.2242, 9231),
        "adaq_lora": (0.3411, 0.1688, 0.2122, 0.1833, 0.2263, 8446),
    },
    2: {
        "base": (0.5204, 0.2849, 0.3408, 0.3213, 0.3668, 48885),
        "lora": (0.5542, 0.3113, 0.3595, 0.3403, 0.3913, 59551),
        "qlora": (0.5490, 0.3245, 0.3716, 0.3508, 0.3989, 12626),
        "adaq_lora": (0.5553, 0.3294, 0.3789, 0.3592, 0.4057, 9072),
    },
}

PAPER_TEST_FRACTION = 0.2  # "80% of the data is extracted for model training, and the remaining 20% is used as a test set"
# Rows of the hub sets the paper names (its text says 52,000 and "about 250,000"): shibing624/alpaca-zh's 48,818 and
# BelleGroup/school_math_0.25M's about 248,000; the paper's test sets are 20% of these.
PAPER_SET_ROWS = {1: 48_818, 2: 248_000}


def published_memory_mb(table: int, method: str) -> int:
    """The Memory/MB the paper prints for `method`'s row of Table `table` (1 or 2)."""
    return PAPER_ROWS[table][method][-1]
