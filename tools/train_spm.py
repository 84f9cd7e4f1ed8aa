"""Trains a SentencePiece model whose id 0 is the RNN-T blank.

    python tools/train_spm.py corpus/train-labeled --vocab_size 256 --output_prefix spm/spm
    python tools/train_spm.py lines.txt --model_type bpe --vocab_size 1024 --output_prefix spm/bpe

INPUT is a LibriSpeech-layout directory (its *.trans.txt are read) or a text file with one
sentence per line. Text is lower-cased as in the TFRecords. Tiny corpora may yield fewer pieces
than asked for (no hard limit); the actual size is printed. PREFIX.json records what the model was
trained on (INPUT, sentences, the options, the pieces), so that a data directory's model can be
checked against the corpus a run asks for (`tfkd.study.jobs.check_spm`).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd import cli  # noqa: E402  (after the path; no TensorFlow)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input", help="LibriSpeech-layout directory or a text file")
    p.add_argument("--output_prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab_size", type=int, default=256, help="including <blank> and <unk>")
    p.add_argument("--model_type", choices=("unigram", "bpe"), default="unigram")
    p.add_argument("--character_coverage", type=float, default=1.0)
    p.add_argument(
        "--hard_vocab_limit", action="store_true", help="fail if vocab_size cannot be reached"
    )
    args = p.parse_args(argv)
    if not os.path.exists(args.input):
        raise cli.UsageError(
            f"{args.input}: no such file or directory (INPUT is a LibriSpeech-layout directory "
            "or a text file)"
        )

    from tfkd.data import librispeech, shard_writer, tokenizer

    if os.path.isdir(args.input):
        texts = [text for _, _, _, text in librispeech.read_transcripts(args.input)]
    else:
        with open(args.input, encoding="utf-8") as f:
            texts = [librispeech.normalize_text(line) for line in f]
    texts = [t for t in texts if t]
    try:
        path = tokenizer.train_sentencepiece(
            texts,
            args.output_prefix,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            hard_vocab_limit=args.hard_vocab_limit,
        )
    except RuntimeError as e:
        # SentencePiece's refusals of its options (e.g. a --vocab_size this text cannot reach
        # under --hard_vocab_limit) are RuntimeErrors; its message names the option.
        raise cli.UsageError(f"SentencePiece: {e}") from e
    tok = tokenizer.Tokenizer(path)
    manifest = {
        "input": os.path.abspath(args.input),
        "sentences": len(texts),
        "vocab_size": args.vocab_size,
        "model_type": args.model_type,
        "character_coverage": args.character_coverage,
        "pieces": tok.vocab_size,
        "model_sha256": tokenizer.file_sha256(path),
    }
    shard_writer.write_json_atomic(args.output_prefix + ".json", manifest)
    print(
        f"{path}: {args.model_type}, {tok.vocab_size} ids (0 = blank) from {len(texts)} sentences"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "tools/train_spm.py"))
