"""tfkd's commands: one module per command, each with `main(argv)` and `console_main()`.

    command          installed (console script)   from a clone
    train            tfkd-train                   bin/train
    evaluate         tfkd-evaluate                bin/evaluate
    pseudo_label     tfkd-pseudo-label            bin/pseudo_label
    export           tfkd-export                  bin/export
    convert_tflite   tfkd-convert-tflite          bin/convert_tflite

Both start through `tfkd.cli.run_command`, which sets TensorFlow's environment
(`tfkd.cli.TF_ENVIRONMENT`, without overriding the user's) and turns expected failures into one
line and exit code 2. The modules import TensorFlow only inside `main`, after that, so `--help`
and bad flags stay fast. Flags live only here.
"""
