"""LongBench v1 and LongBench-E configuration, embedded: task lists, categories, the official prompts
and generation lengths (``config/dataset2prompt.json``, ``dataset2maxlen.json``, ``model2maxlen.json``
of THUDM/LongBench, verbatim), and the tasks run without a chat template. Data, not code: kept apart
from :mod:`dynamickv.eval.longbench`, which loads, truncates and scores."""

from __future__ import annotations

#: The 16 English LongBench tasks (the set the DynamicKV / WindowKV / SnapKV papers report).
TASKS_EN: tuple[str, ...] = (
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "gov_report",
    "qmsum",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
)

#: The 5 Chinese LongBench tasks.
TASKS_ZH: tuple[str, ...] = ("multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh")

#: All 21 LongBench v1 tasks, in the order of the official ``pred.py``.
TASKS: tuple[str, ...] = (
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "multifieldqa_zh",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "dureader",
    "gov_report",
    "qmsum",
    "multi_news",
    "vcsum",
    "trec",
    "triviaqa",
    "samsum",
    "lsht",
    "passage_count",
    "passage_retrieval_en",
    "passage_retrieval_zh",
    "lcc",
    "repobench-p",
)

#: LongBench-E (length-balanced subsets, files ``<task>_e.jsonl``), as in the official ``pred.py --e``:
#: the English tasks without the three that have no LongBench-E subset, in the same order.
TASKS_E: tuple[str, ...] = tuple(t for t in TASKS_EN if t not in ("narrativeqa", "musique", "qmsum"))

#: Coarse category (one of :data:`dynamickv.eval.base.CATEGORIES`) of every task.
TASK_CATEGORY: dict[str, str] = {
    "narrativeqa": "qa",
    "qasper": "qa",
    "multifieldqa_en": "qa",
    "multifieldqa_zh": "qa",
    "hotpotqa": "qa",
    "2wikimqa": "qa",
    "musique": "qa",
    "dureader": "qa",
    "gov_report": "summarization",
    "qmsum": "summarization",
    "multi_news": "summarization",
    "vcsum": "summarization",
    "trec": "few-shot",
    "triviaqa": "few-shot",
    "samsum": "few-shot",
    "lsht": "few-shot",
    "passage_count": "synthetic",
    "passage_retrieval_en": "synthetic",
    "passage_retrieval_zh": "synthetic",
    "lcc": "code",
    "repobench-p": "code",
}

#: The six column groups of the LongBench paper tables (QA split into single- and multi-document).
TASK_GROUP: dict[str, str] = {
    "narrativeqa": "Single-Doc QA",
    "qasper": "Single-Doc QA",
    "multifieldqa_en": "Single-Doc QA",
    "multifieldqa_zh": "Single-Doc QA",
    "hotpotqa": "Multi-Doc QA",
    "2wikimqa": "Multi-Doc QA",
    "musique": "Multi-Doc QA",
    "dureader": "Multi-Doc QA",
    "gov_report": "Summarization",
    "qmsum": "Summarization",
    "multi_news": "Summarization",
    "vcsum": "Summarization",
    "trec": "Few-shot Learning",
    "triviaqa": "Few-shot Learning",
    "samsum": "Few-shot Learning",
    "lsht": "Few-shot Learning",
    "passage_count": "Synthetic",
    "passage_retrieval_en": "Synthetic",
    "passage_retrieval_zh": "Synthetic",
    "lcc": "Code",
    "repobench-p": "Code",
}

#: Official ``LongBench/config/dataset2prompt.json`` (v1), verbatim, including its "asconcisely" typo
#: in the narrativeqa prompt: that is the text the published v1 results and the KV-compression papers
#: (SnapKV, PyramidKV, DynamicKV's ``run/longbench/pred.py``) were run with; a later upstream revision of
#: the root ``config/dataset2prompt.json`` reads "as concisely".
DATASET2PROMPT: dict[str, str] = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": 'You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:',
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": 'Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", etc.\n\nThe answer is: ',
    "passage_retrieval_zh": '以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是"段落1"，"段落2"等格式\n\n答案是：',
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

#: Official ``LongBench/config/dataset2maxlen.json`` (v1): ``max_new_tokens`` per task.
DATASET2MAXLEN: dict[str, int] = {
    "narrativeqa": 128,
    "qasper": 128,
    "multifieldqa_en": 64,
    "multifieldqa_zh": 64,
    "hotpotqa": 32,
    "2wikimqa": 32,
    "musique": 32,
    "dureader": 128,
    "gov_report": 512,
    "qmsum": 512,
    "multi_news": 512,
    "vcsum": 512,
    "trec": 64,
    "triviaqa": 32,
    "samsum": 128,
    "lsht": 64,
    "passage_count": 32,
    "passage_retrieval_en": 32,
    "passage_retrieval_zh": 32,
    "lcc": 64,
    "repobench-p": 64,
}

#: Official ``LongBench/config/model2maxlen.json`` (v1): prompt truncation length (tokens) per model name.
MODEL2MAXLEN: dict[str, int] = {
    "llama2-7b-chat-4k": 3500,
    "longchat-v1.5-7b-32k": 31500,
    "xgen-7b-8k": 7500,
    "internlm-7b-8k": 7500,
    "chatglm2-6b": 31500,
    "chatglm2-6b-32k": 31500,
    "chatglm3-6b-32k": 31500,
    "vicuna-v1.5-7b-16k": 15500,
}

#: ``model2maxlen`` of the DynamicKV reference script (DreamMr/DynamicKV ``run/longbench/pred.py``,
#: inherited from PyramidKV): matched as a *substring* of the lower-cased model name. This is the
#: truncation the DynamicKV paper's LongBench numbers use (e.g. Llama-3-8B-Instruct 7950, Mistral-7B /
#: Qwen2-7B 31500). Note that "llama-3" also matches Llama-3.1 / 3.2 names, as in that script.
DYNAMICKV_MODEL2MAXLEN: dict[str, int] = {
    "llama2": 3950,
    "llama-2": 3950,
    "llama3": 7950,
    "llama-3": 7950,
    "mistral": 31500,
    "qwen2": 31500,
    "lwm": 1048576,
    "internlm": 1048576,
}

#: Tasks the official ``pred.py`` runs without the chat template ("chat models are better off without
#: build prompts on these tasks"): the few-shot and code-completion tasks.
NO_CHAT_TEMPLATE: frozenset[str] = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
